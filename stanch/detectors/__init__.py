"""Output detectors: does a model's answer leak a secret or personal data, show that a prompt
injection worked, fall apart, or (asking a moderation endpoint or a guard model) cause harm;
and the masking applied before a signal enters a history.

`registry.Detectors` is the one registry confirm, verify, the gateway and the regression gate
use: the regex built-ins (`regex`), a runbook's own detectors (`specs`), and the clients for
the detectors that call a service (`service`)."""
