"""Column names, class names and label tasks of the CICIoMT2024 Wi-Fi/MQTT release."""

from __future__ import annotations

import re
from typing import Literal

Task = Literal["binary", "category", "multiclass"]
TASKS: tuple[Task, ...] = ("binary", "category", "multiclass")

#: The 45 feature columns of the release, in file order. ``Magnitue`` is spelled so in the release.
FEATURE_COLUMNS: tuple[str, ...] = (
    "Header_Length", "Protocol Type", "Duration", "Rate", "Srate", "Drate",
    "fin_flag_number", "syn_flag_number", "rst_flag_number", "psh_flag_number",
    "ack_flag_number", "ece_flag_number", "cwr_flag_number",
    "ack_count", "syn_count", "fin_count", "rst_count",
    "HTTP", "HTTPS", "DNS", "Telnet", "SMTP", "SSH", "IRC", "TCP", "UDP", "DHCP",
    "ARP", "ICMP", "IGMP", "IPv", "LLC",
    "Tot sum", "Min", "Max", "AVG", "Std", "Tot size", "IAT", "Number",
    "Magnitue", "Radius", "Covariance", "Variance", "Weight",
)

#: Renamed columns of the newer 39-column CIC layout, mapped to their release names.
LAYOUT39_RENAMES: dict[str, str] = {"Time_To_Live": "Duration"}

#: Release columns absent from the 39-column layout.
LAYOUT39_MISSING: tuple[str, ...] = ("Srate", "Drate", "Magnitue", "Radius", "Covariance", "Weight")

#: The column that carries an absolute capture timestamp every 20 frames and so identifies
#: the recording rather than the attack.
LEAK_COLUMNS: tuple[str, ...] = ("IAT",)

#: The 19 Wi-Fi/MQTT classes, mapped to their category (the 6-class task).
CLASS_CATEGORIES: dict[str, str] = {
    "Benign": "Benign",
    "ARP_Spoofing": "Spoofing",
    "Recon-OS_Scan": "Recon",
    "Recon-Ping_Sweep": "Recon",
    "Recon-Port_Scan": "Recon",
    "Recon-VulScan": "Recon",
    "MQTT-DDoS-Connect_Flood": "MQTT",
    "MQTT-DDoS-Publish_Flood": "MQTT",
    "MQTT-DoS-Connect_Flood": "MQTT",
    "MQTT-DoS-Publish_Flood": "MQTT",
    "MQTT-Malformed_Data": "MQTT",
    "TCP_IP-DoS-ICMP": "DoS",
    "TCP_IP-DoS-SYN": "DoS",
    "TCP_IP-DoS-TCP": "DoS",
    "TCP_IP-DoS-UDP": "DoS",
    "TCP_IP-DDoS-ICMP": "DDoS",
    "TCP_IP-DDoS-SYN": "DDoS",
    "TCP_IP-DDoS-TCP": "DDoS",
    "TCP_IP-DDoS-UDP": "DDoS",
}
CLASSES: tuple[str, ...] = tuple(CLASS_CATEGORIES)
CATEGORIES: tuple[str, ...] = ("Benign", "Spoofing", "Recon", "MQTT", "DoS", "DDoS")
BINARY_LABELS: tuple[str, ...] = ("Benign", "Attack")

#: Release file names: ``<Class>[part digits]_{train,test}.pcap.csv``.
RELEASE_FILE_PATTERN = re.compile(r"^(?P<stem>.+?)(?P<part>\d*)_(?P<side>train|test)\.pcap\.csv$")
RELEASE_FILE_PATTERN_TEXT = "<Class>[part digits]_{train,test}.pcap.csv, <Class> one of " + ", ".join(CLASSES)


def task_label(class_name: str, task: Task) -> str:
    """Map one of the 19 class names to its label under ``task``."""
    if class_name not in CLASS_CATEGORIES:
        raise ValueError(f"unknown class {class_name!r}; expected one of {', '.join(CLASSES)}")
    if task == "multiclass":
        return class_name
    if task == "category":
        return CLASS_CATEGORIES[class_name]
    if task == "binary":
        return "Benign" if class_name == "Benign" else "Attack"
    raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")


def task_labels(task: Task) -> tuple[str, ...]:
    """Return every label of ``task`` in its canonical order."""
    if task == "multiclass":
        return CLASSES
    if task == "category":
        return CATEGORIES
    if task == "binary":
        return BINARY_LABELS
    raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")


def is_attack(label: str) -> bool:
    """Return True unless ``label`` is the benign label of any task."""
    return label != "Benign"


def category_of(label: str) -> str:
    """Return the category of a class or category label; binary ``Attack`` stays ``Attack``."""
    if label in CLASS_CATEGORIES:
        return CLASS_CATEGORIES[label]
    return label
