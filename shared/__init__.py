"""Code both the controller and the agent use: models, MQTT topics and messages, settings."""

__version__ = "0.1.0"
