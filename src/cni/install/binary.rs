//! The plugin's executable in the host's CNI binary directory: a copy of the running meshcap,
//! named `meshcap-cni` (the name that makes meshcap act as the plugin).

use super::atomic;
use super::conflist::PLUGIN_TYPE;
use super::error::{InstallError, Result};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The running executable, whatever its name or mount.
pub const SELF_EXE: &str = "/proc/self/exe";

const MODE: u32 = 0o755;

pub fn target(bin_dir: &Path) -> PathBuf {
    bin_dir.join(PLUGIN_TYPE)
}

/// Copies `source` to `bin_dir/meshcap-cni` unless an identical executable is there already.
/// Returns whether it copied.
pub fn install(source: &Path, bin_dir: &Path) -> Result<bool> {
    let target = target(bin_dir);
    if is_current(source, &target).map_err(InstallError::io("comparing with", &target))? {
        return Ok(false);
    }
    let mut input = File::open(source).map_err(InstallError::io("opening", source))?;
    atomic::write_with(&target, MODE, |file| io::copy(&mut input, file).map(drop))?;
    Ok(true)
}

/// Removes `bin_dir/meshcap-cni`; true when it was there.
pub fn uninstall(bin_dir: &Path) -> Result<bool> {
    atomic::remove_if_present(&target(bin_dir))
}

fn is_current(source: &Path, target: &Path) -> io::Result<bool> {
    let installed = match std::fs::metadata(target) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if installed.permissions().mode() & 0o7777 != MODE
        || installed.len() != std::fs::metadata(source)?.len()
    {
        return Ok(false);
    }
    same_contents(File::open(source)?, File::open(target)?)
}

fn same_contents(mut a: impl Read, mut b: impl Read) -> io::Result<bool> {
    let (mut buf_a, mut buf_b) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let n = read_full(&mut a, &mut buf_a)?;
        if n != read_full(&mut b, &mut buf_b)? || buf_a[..n] != buf_b[..n] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

/// Fills `buf` as far as the input goes: short reads must not look like a difference.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_whole_contents() {
        let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let mut other = big.clone();
        assert!(same_contents(&big[..], &other[..]).unwrap());
        other[150_000] ^= 1;
        assert!(!same_contents(&big[..], &other[..]).unwrap());
        assert!(!same_contents(&big[..], &big[..100]).unwrap());
        assert!(same_contents(&b""[..], &b""[..]).unwrap());
    }
}
