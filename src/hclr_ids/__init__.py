"""HCLR-IDS: a CNN-LSTM feature extractor with DQN and PPO decision heads for IoMT intrusion detection."""

__version__ = "0.1.0"
