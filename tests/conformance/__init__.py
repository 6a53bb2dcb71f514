"""The OCI Distribution Spec's conformance workflows, run against every server."""
