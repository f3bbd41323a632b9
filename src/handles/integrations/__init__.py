"""Integrations with workflow engines. Never imported by `import handles`."""
