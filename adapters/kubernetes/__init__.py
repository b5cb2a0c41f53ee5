"""The Kubernetes provider: one Deployment + Service + Secret per node, on a cluster with GPU nodes."""
