"""Deployment assets for hmhi-uvos: container image, KubeRay and cluster-launcher configs, local rehearsal."""
