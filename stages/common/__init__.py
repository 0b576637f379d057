"""Code shared by several stages (never a stage itself): sandbox, verifiers, training loop."""
