"""Probing a model through any OpenAI-compatible endpoint, as LLMs behave.

Confirm and verify send each repro case (an OpenAI chat conversation) to a target's chat
endpoint — the gateway, or the model's own serving URL (vLLM, Ollama, llama.cpp, LiteLLM, TGI,
KServe, OpenAI, Azure OpenAI) — `samples` times at the runbook's temperature, run the
detectors on every answer, and decide on a threshold: a case reproduces when at least
`harmful_at_least` samples are harmful. A stochastic model that did not misbehave this time
has not shown it never will, so a miss is "not reproduced", never "false positive".

    endpoint   ChatEndpoint: where to send a probe (a target builds it at call time)
    client     one chat completions request and what it answered (ChatAnswer, ProbeFailed)
    sampling   every sample of one case, the detectors on each, the threshold (CaseProbe)
    metric     the runbook's Prometheus query, filled in safely (confirm and verify share it)
"""
