//! The node installer (`meshcap cni install` / `uninstall`).
