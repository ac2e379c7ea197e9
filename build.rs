//! Link two libraries statically, when the system has their archives, because every pod start
//! pays for each shared library meshcap loads:
//!
//! - libnftnl (Debian's libnftnl-dev ships libnftnl.a). libmnl stays shared: Debian has no
//!   libmnl.a.
//! - libgcc's unwinder, libgcc_eh.a in place of libgcc_s.so. libgcc_s also runs a CPU-detection
//!   constructor at load.
//!
//! Each shared library costs the dynamic loader a file mapping, relocations and symbol lookups.
//! Together these two cost about 0.3 ms of CPU at start (1.43 ms against 1.11 ms for
//! `meshcap --version` here). That is a tenth of the time it takes to install Istio's rules in a
//! fresh namespace (docs/BENCHMARKS.md).
//!
//! The archives are named before the shared libraries on the link line, so the linker (rust-lld)
//! takes their definitions, and `--as-needed` then drops libnftnl.so and libgcc_s.so.
//! `MESHCAP_LINK_DYNAMIC=1` keeps both shared. tests/proxy_image.rs checks what `ldd` lists.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=MESHCAP_LINK_DYNAMIC");
    let linux_gnu = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu");
    if !linux_gnu || std::env::var_os("MESHCAP_LINK_DYNAMIC").is_some() {
        return;
    }

    match pkg_config::get_variable("libnftnl", "libdir") {
        Ok(dir) if Path::new(&dir).join("libnftnl.a").is_file() => {
            println!("cargo:rustc-link-search=native={dir}");
            println!("cargo:rustc-link-lib=static:-bundle=nftnl");
        }
        _ => println!("cargo:warning=libnftnl.a not found: libnftnl stays a shared library"),
    }

    // The C compiler knows where its own runtime archives are; it prints the bare name when it
    // has no such file.
    let gcc_eh = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .arg("-print-file-name=libgcc_eh.a")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|path| path.trim().to_owned())
        .filter(|path| Path::new(path).is_absolute() && Path::new(path).is_file());
    match gcc_eh.as_deref().and_then(|path| Path::new(path).parent()) {
        Some(dir) => {
            println!("cargo:rustc-link-search=native={}", dir.display());
            println!("cargo:rustc-link-lib=static:-bundle=gcc_eh");
        }
        None => println!("cargo:warning=libgcc_eh.a not found: the unwinder stays libgcc_s.so"),
    }
}
