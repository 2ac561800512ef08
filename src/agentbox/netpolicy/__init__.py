"""Network policy: what a sandbox may reach (``egress``) and which host ports it gets (``host_ports``).

=========  ===================================================================================
module     job
=========  ===================================================================================
rules      allow-list rules, parsed and judged (pure; shared by the host and the gateway)
gateway    the egress gateway program: HTTP proxy, DNS, host-port and server relays (a container)
hostrelay  the host-port relay program, in the host's network namespace (a container)
=========  ===================================================================================

The Docker backend makes and removes the containers, network and volume
(:mod:`agentbox.backends.docker.egress`). Nothing here imports the host-side stack: the gateway runs
from the runtime image's own environment.
"""

from agentbox.netpolicy.rules import EGRESS_NONE, EGRESS_OPEN, Decision, Policy, Rule, normalize_egress, parse_rule

__all__ = ["EGRESS_NONE", "EGRESS_OPEN", "Decision", "Policy", "Rule", "normalize_egress", "parse_rule"]
