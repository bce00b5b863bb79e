"""A capture lab in Linux network namespaces that produces CICIoMT2024-style rows from real traffic.

``run_lab`` builds a bridged network of a broker, IoMT devices and attackers, captures benign
traffic and one attack scenario per Wi-Fi/MQTT class with tcpdump, and writes the 45 window
features in the release layout. It needs root and the tools listed by ``scripts/install-lab-deps.sh``.
"""

from hclr_ids.lab.runner import CaptureResult, LabResult, check_requirements, run_lab, write_release_split
from hclr_ids.lab.scenarios import SCALES, SCENARIOS, LabScale, Scenario, Step, resolve_scenarios, window_for_class
from hclr_ids.lab.topology import DEFAULT_HOSTS, LabError, LabHost, LabTopology, lab_namespaces

__all__ = [
    "DEFAULT_HOSTS", "SCALES", "SCENARIOS", "CaptureResult", "LabError", "LabHost", "LabResult", "LabScale",
    "LabTopology", "Scenario", "Step", "check_requirements", "lab_namespaces", "resolve_scenarios", "run_lab",
    "window_for_class", "write_release_split",
]
