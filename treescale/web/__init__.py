"""What a registry node shows operators over HTTP beside the API: the status page."""
