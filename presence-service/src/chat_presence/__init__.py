"""chat-presence: presence-service.

Until presence lands (issue 4) it runs as a full member of the stack — it
connects to NATS, registers its micro service and answers health, readiness
and metrics — so that deployment, probes and the launcher are settled first.
"""
