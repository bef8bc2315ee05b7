"""HMHI-Net model package."""
