//! Binary size, peak memory of an apply, and the runtime image's contents.

use crate::Settings;
use crate::stats::{self, Summary};
use crate::sys;
use netns_test_harness::Netns;
use std::path::Path;
use std::process::Command;

pub struct Rss {
    pub label: &'static str,
    pub n: usize,
    pub kib: Result<Summary, String>,
}

pub struct ImageFile {
    pub path: String,
    pub bytes: u64,
    /// Symlink target, or the number of files a collapsed directory row stands for.
    pub what: String,
}

pub struct Footprint {
    pub binary_bytes: u64,
    pub stripped_bytes: Result<u64, String>,
    pub rss: Vec<Rss>,
    pub dockerfile_copies: Vec<String>,
    pub image: Result<Vec<ImageFile>, String>,
    pub image_total: u64,
    /// The nftables-only image's total (`stage-rootfs.sh --nftables-only`: no iptables).
    pub nft_only_total: Result<u64, String>,
}

const RSS_RUNS: usize = 3;

pub fn run(settings: &Settings) -> Footprint {
    let meshcap = settings.meshcap.as_str();
    let binary_bytes = std::fs::metadata(meshcap).map(|m| m.len()).unwrap_or(0);
    let stripped = settings.scratch.join("meshcap.stripped");
    let stripped_bytes = Command::new("strip")
        .args(["-o", &stripped.display().to_string(), meshcap])
        .output()
        .map_err(|e| format!("strip: {e}"))
        .and_then(|o| {
            if o.status.success() {
                std::fs::metadata(&stripped)
                    .map(|m| m.len())
                    .map_err(|e| e.to_string())
            } else {
                Err(format!(
                    "strip: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ))
            }
        });

    let mut rss = Vec::new();
    let lengths: &[usize] = if settings.quick {
        &[0, 1000]
    } else {
        &[0, 1000, 10000]
    };
    for &n in lengths {
        let args = stats::meshcap_args(&stats::ports(n, None), &stats::cidrs(n, None));
        for (label, extra) in [
            ("--dry-run (iptables text)", &["--dry-run"][..]),
            ("nftables (netlink)", &["--backend", "nftables"]),
            (
                "iptables-nft (with iptables-nft-restore)",
                &["--force-iptables-binary", "nft"],
            ),
            (
                "iptables-legacy (with iptables-legacy-restore)",
                &["--force-iptables-binary", "legacy"],
            ),
        ] {
            let mut kib = Vec::new();
            let mut err = None;
            for _ in 0..RSS_RUNS {
                // meshcap enters the namespace itself: the rusage is meshcap's (and its
                // iptables-restore child's), without `ip netns exec`.
                let ns = Netns::new("rss");
                let mut cmd = Command::new(meshcap);
                cmd.args(&args).args(extra);
                if extra != ["--dry-run"] {
                    cmd.args(["--network-namespace", &ns.path().display().to_string()]);
                }
                match sys::run_timed(cmd) {
                    Ok(r) => kib.push(r.maxrss_kib as f64),
                    Err(e) => {
                        err = Some(e);
                        break;
                    }
                }
            }
            rss.push(Rss {
                label,
                n,
                kib: match err {
                    Some(e) => Err(e),
                    None => Summary::of(&kib).ok_or_else(|| "no run".to_owned()),
                },
            });
        }
    }

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The final stage: from its FROM on, the lines that put something into the image.
    let dockerfile_copies = std::fs::read_to_string(root.join("Dockerfile"))
        .map(|d| {
            let lines: Vec<&str> = d.lines().map(str::trim).collect();
            let last_from = lines
                .iter()
                .rposition(|l| l.starts_with("FROM "))
                .unwrap_or(0);
            lines[last_from..]
                .iter()
                .filter(|l| {
                    ["FROM ", "COPY ", "ADD ", "ENTRYPOINT", "CMD"]
                        .iter()
                        .any(|k| l.starts_with(k))
                })
                .map(|l| l.to_string())
                .collect()
        })
        .unwrap_or_else(|e| vec![format!("(Dockerfile: {e})")]);
    let (image, image_total) =
        match stage_image(root, meshcap, &settings.scratch.join("rootfs"), &[]) {
            Ok((files, total)) => (Ok(files), total),
            Err(e) => (Err(e), 0),
        };
    let nft_only_total = stage_image(
        root,
        meshcap,
        &settings.scratch.join("rootfs-nft"),
        &["--nftables-only"],
    )
    .map(|(_, total)| total);
    Footprint {
        binary_bytes,
        stripped_bytes,
        rss,
        dockerfile_copies,
        image,
        image_total,
        nft_only_total,
    }
}

/// Runs deploy/stage-rootfs.sh (what the Dockerfile's runtime stage copies) into `dir` and lists
/// it: one row per file, the iptables extension directory collapsed into one row.
fn stage_image(
    root: &Path,
    meshcap: &str,
    dir: &Path,
    options: &[&str],
) -> Result<(Vec<ImageFile>, u64), String> {
    let _ = std::fs::remove_dir_all(dir);
    let out = Command::new("sh")
        .arg(root.join("deploy/stage-rootfs.sh"))
        .args(options)
        .arg(dir)
        .arg(meshcap)
        .output()
        .map_err(|e| format!("deploy/stage-rootfs.sh: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "deploy/stage-rootfs.sh failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let mut all = Vec::new();
    walk(dir, dir, &mut all).map_err(|e| format!("listing {}: {e}", dir.display()))?;
    all.sort_by(|a, b| a.path.cmp(&b.path));
    let total = all.iter().map(|f| f.bytes).sum();
    let mut rows: Vec<ImageFile> = Vec::new();
    // Symlinks: one row per directory and target, naming the links.
    let mut links: Vec<(String, String, Vec<String>)> = Vec::new();
    for f in all.iter().filter(|f| f.what.starts_with('→')) {
        let (dir, name) = f.path.rsplit_once('/').unwrap_or(("", &f.path));
        match links.iter_mut().find(|(d, t, _)| d == dir && *t == f.what) {
            Some((_, _, names)) => names.push(name.to_owned()),
            None => links.push((dir.to_owned(), f.what.clone(), vec![name.to_owned()])),
        }
    }
    all.retain(|f| !f.what.starts_with('→'));
    for (dir, target, names) in links {
        all.push(ImageFile {
            path: format!("{dir}/{{{}}}", names.join(",")),
            bytes: 0,
            what: format!("{} symlinks {target}", names.len()),
        });
    }
    all.sort_by(|a, b| a.path.cmp(&b.path));
    for f in all {
        let collapse = f
            .path
            .rsplit_once('/')
            .map(|(d, _)| d.to_owned())
            .filter(|d| d.ends_with("/xtables"));
        match collapse {
            Some(d) => {
                let key = format!("{d}/*.so");
                match rows.iter_mut().find(|r| r.path == key) {
                    Some(r) => {
                        r.bytes += f.bytes;
                        let k: usize = r
                            .what
                            .split(' ')
                            .next()
                            .and_then(|x| x.parse().ok())
                            .unwrap_or(0);
                        r.what = format!("{} files (iptables extensions)", k + 1);
                    }
                    None => rows.push(ImageFile {
                        path: key,
                        bytes: f.bytes,
                        what: "1 files (iptables extensions)".to_owned(),
                    }),
                }
            }
            None => rows.push(f),
        }
    }
    let _ = std::fs::remove_dir_all(dir);
    Ok((rows, total))
}

fn walk(base: &Path, dir: &Path, out: &mut Vec<ImageFile>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path)?;
        let rel = format!("/{}", path.strip_prefix(base).unwrap_or(&path).display());
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path)?;
            out.push(ImageFile {
                path: rel,
                bytes: 0,
                what: format!("→ {}", target.display()),
            });
        } else if meta.is_dir() {
            if std::fs::read_dir(&path)?.next().is_none() {
                out.push(ImageFile {
                    path: format!("{rel}/"),
                    bytes: 0,
                    what: "empty directory".to_owned(),
                });
            }
            walk(base, &path, out)?;
        } else {
            out.push(ImageFile {
                path: rel,
                bytes: meta.len(),
                what: String::new(),
            });
        }
    }
    Ok(())
}
