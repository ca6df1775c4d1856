"""Ray plumbing: `cluster` (starting or joining Ray, the actors' environment), `group` (ActorGroup, gather,
retries) and `rendezvous` (ports and torch.distributed for learner ranks). Algorithms never touch placement
groups, ports or environment variables themselves. Imports only `rlcore.core`."""
