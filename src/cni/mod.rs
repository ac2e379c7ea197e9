//! CNI mode: meshcap as a chained CNI plugin (`meshcap-cni`), another front door to the same
//! flow: the network configuration and pod annotations become the same [`crate::cli::Inputs`],
//! validated by the same [`crate::config`], planned and applied by the same backends, inside
//! `CNI_NETNS`.

pub mod install;
pub mod k8s;
