"""Evaluation: metrics per domain, unsupervised validators for checkpoint selection, domain gap."""
