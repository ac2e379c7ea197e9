//! Owner users and groups by name, from this system's databases: the config resolves a proxy user
//! (`ISTIO_PROXY_USER`) to its uid, and both backends resolve owner group names to gids when they
//! spell a rule (re-exported by `backend::host`).
//!
//! The release binary is linked statically (glibc), and a static glibc reaches the user and group
//! databases through NSS, which may find no modules on a node (the binary runs from the node's
//! root, or from an image that holds nothing else). So the files are read here first, in Rust;
//! only a name they do not hold goes to the C library (LDAP users). Numbers never need a lookup.

/// The third field of the line of `name` in a colon-separated database (passwd, group).
fn id_in(text: &str, name: &str) -> Option<u32> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let mut fields = line.split(':');
            (fields.next()? == name).then_some(())?;
            fields.nth(1)?.trim().parse().ok()
        })
}

fn id_in_file(path: &str, name: &str) -> Option<u32> {
    id_in(&std::fs::read_to_string(path).ok()?, name)
}

/// The gid of the group `name` on this system, if it has one.
pub fn gid_of(name: &str) -> Option<u32> {
    id_in_file("/etc/group", name).or_else(|| {
        nix::unistd::Group::from_name(name)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw())
    })
}

/// The uid of the user `name` on this system, if it has one.
pub fn uid_of(name: &str) -> Option<u32> {
    id_in_file("/etc/passwd", name).or_else(|| {
        nix::unistd::User::from_name(name)
            .ok()
            .flatten()
            .map(|u| u.uid.as_raw())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_come_from_the_files_third_field() {
        let group = "# comment\nroot:x:0:\nistio-proxy:x:1337:a,b\nbad:x:notanumber:\n";
        assert_eq!(id_in(group, "istio-proxy"), Some(1337));
        assert_eq!(id_in(group, "root"), Some(0));
        assert_eq!(id_in(group, "bad"), None);
        assert_eq!(id_in(group, "istio"), None);
        assert_eq!(id_in("", "root"), None);
    }
}
