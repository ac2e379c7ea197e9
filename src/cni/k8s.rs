//! The Kubernetes side: the pod from the API server and what Istio reads of it.
