"""Everything only the service runs: HTTP models, the request guard, orchestration, coalescing,
model versions, service settings and the BentoML workarounds. `service.py` wires it up."""
