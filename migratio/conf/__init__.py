"""Configuration: config.yml, destination site confs (typed options), the old tool's shell confs, validation."""
