"""fleetserve on Kubernetes: the Helm chart's values schema, the Serve application builder a
KubeRay RayService runs, and the spot watcher that drains nodes about to disappear."""
