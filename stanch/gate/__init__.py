"""The regression gate: every past incident's repro cases, replayed against a candidate before
it ships.

Each incident's review adds its repro cases to the model's regression suite
(stanch.stores.regression). The gate replays the suite's active cases against a candidate
model version through the prober (N samples, the detectors each case recorded) and says
pass, fail (naming each case that regressed and the incident that recorded it) or
inconclusive. The CLI (`stanch gate`), the API (`POST /v1/gate`, read by CI jobs and Argo
Rollouts' web metric) and MLflow alias checks all call `run_gate`.

    models   GateRequest, GateVerdict, CaseVerdict: what goes in and comes out (never a prompt
             or an answer: the suite's content stays in the suite)
    run      run_gate, and GateCannotRun for a database or gateway out of reach
"""
