"""The Picket agent: runs checks at a checkpoint and streams results to the controller over MQTT."""
