//! The source tree's import shape, checked from the text of src/ (no build, no network):
//!
//! - no two files import each other (a parent that re-exports a child's item while the child
//!   imports the parent is such a pair: shared items go to a leaf file both import), and no
//!   longer loop runs through several files (session -> nftables -> backend/mod.rs -> session);
//! - no top-level module imports one above it on the ladder
//!   main → front doors (cli, cni, explain, trace, proxy, validation, ambient) → backend → plan →
//!   config → inputs, with logging and duration as leaves anyone may use.
//!
//! An import is any path that names an item of another file: `use` trees (groups `{a, b}`,
//! nested groups, `self`, renames) and paths written in code (`crate::plan::Chain`,
//! `super::Applied`, `child::f()`, a name brought in by `use crate::backend::session;` then
//! `session::Namespace`). A path counts against the deepest file module it reaches: an item
//! defined in (or re-exported by) `plan/mod.rs` imports `plan/mod.rs`. Comments, string
//! literals and `#[cfg(test)]` modules (inline or in their own file) are not imports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Pairs allowed to import each other while a move is under way; each entry says who removes
/// it. Empty: no loop is allowed.
const ALLOWED_PAIRS: &[(&str, &str)] = &[];

/// A top-level module's step on the ladder: a module may import its own step or lower ones.
/// Front doors share one step: they sit side by side above the backend.
fn step(top: &str) -> Option<u8> {
    Some(match top {
        "main" | "lib" => 7,
        "cli" | "cni" | "explain" | "trace" | "proxy" | "validation" | "ambient" => 6,
        "backend" => 5,
        "plan" => 4,
        "config" => 3,
        "inputs" => 2,
        "logging" | "duration" => 1,
        _ => return None,
    })
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    PathSep,
    Open,
    Close,
    Comma,
    Semi,
    Star,
    Other(char),
}

/// Rust source as tokens, without comments, string and character literals, numbers and lifetimes.
fn tokens(src: &str) -> Vec<Tok> {
    let c: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        let next = c.get(i + 1).copied();
        if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && next == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if let Some(end) = raw_string_end(&c, i) {
            i = end;
        } else if ch == '"' || (ch == 'b' && next == Some('"')) {
            i += if ch == 'b' { 2 } else { 1 };
            while i < c.len() && c[i] != '"' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if ch == '\'' || (ch == 'b' && next == Some('\'')) {
            let start = if ch == 'b' { i + 1 } else { i };
            if c.get(start + 1) == Some(&'\\') {
                // An escaped character literal: '\n', '\'', '\u{..}'.
                i = start + 3;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if c.get(start + 2) == Some(&'\'') {
                i = start + 3;
            } else if ch == 'b' {
                out.push(Tok::Ident("b".into()));
                i += 1;
            } else {
                // A lifetime or label: skip the quote and its name.
                i += 1;
                while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                    i += 1;
                }
            }
        } else if ch.is_alphabetic() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            if word == "r"
                && c.get(i) == Some(&'#')
                && c.get(i + 1).is_some_and(|x| x.is_alphabetic())
            {
                continue; // r#ident: the name follows
            }
            out.push(Tok::Ident(word));
        } else if ch.is_ascii_digit() {
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_' || c[i] == '.') {
                if c[i] == '.' && !c.get(i + 1).is_some_and(|x| x.is_ascii_digit()) {
                    break;
                }
                i += 1;
            }
        } else {
            i += 1;
            out.push(match ch {
                ':' if next == Some(':') => {
                    i += 1;
                    Tok::PathSep
                }
                '{' => Tok::Open,
                '}' => Tok::Close,
                ',' => Tok::Comma,
                ';' => Tok::Semi,
                '*' => Tok::Star,
                other => Tok::Other(other),
            });
        }
    }
    out
}

/// The index after a raw (byte) string literal starting at `i`, if one starts there.
fn raw_string_end(c: &[char], i: usize) -> Option<usize> {
    let mut j = i;
    if c.get(j) == Some(&'b') {
        j += 1;
    }
    if c.get(j) != Some(&'r') || (i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_')) {
        return None;
    }
    j += 1;
    let mut hashes = 0;
    while c.get(j) == Some(&'#') {
        hashes += 1;
        j += 1;
    }
    if c.get(j) != Some(&'"') {
        return None;
    }
    j += 1;
    while j < c.len() {
        if c[j] == '"' && (1..=hashes).all(|k| c.get(j + k) == Some(&'#')) {
            return Some(j + 1 + hashes);
        }
        j += 1;
    }
    Some(j)
}

/// One path written in a file: its segments, the inline module it was written in (relative to
/// the file's module), and for a `use` tree the name it binds.
#[derive(Debug)]
struct WrittenPath {
    inline: Vec<String>,
    segments: Vec<String>,
    binds: Option<String>,
}

/// What a file says: the paths it writes and the child files it declares as test-only.
#[derive(Default, Debug)]
struct Scan {
    paths: Vec<WrittenPath>,
    test_children: BTreeSet<String>,
}

fn ident(t: Option<&Tok>) -> Option<&str> {
    match t {
        Some(Tok::Ident(s)) => Some(s),
        _ => None,
    }
}

/// The index of the token after the group whose `{` is at `open`.
fn skip_group(toks: &[Tok], open: usize) -> usize {
    let mut depth = 0;
    let mut i = open;
    while i < toks.len() {
        match toks[i] {
            Tok::Open => depth += 1,
            Tok::Close => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    i
}

/// Parses one use tree (or code path) at `i` under `prefix`; pushes every leaf path with the
/// name it binds. Returns the index after the tree.
fn parse_tree(
    toks: &[Tok],
    mut i: usize,
    prefix: Vec<String>,
    out: &mut Vec<(Vec<String>, Option<String>)>,
) -> usize {
    let mut segs = prefix;
    loop {
        match toks.get(i) {
            Some(Tok::Ident(s)) if s != "as" => {
                segs.push(s.clone());
                i += 1;
            }
            Some(Tok::Open) => {
                // A group: each member is a tree under the segments so far.
                i += 1;
                loop {
                    match toks.get(i) {
                        Some(Tok::Close) => return i + 1,
                        Some(Tok::Comma) => i += 1,
                        None => return i,
                        _ => {
                            let before = i;
                            i = parse_tree(toks, i, segs.clone(), out);
                            if i == before {
                                i += 1;
                            }
                        }
                    }
                }
            }
            Some(Tok::Star) => {
                out.push((segs, None));
                return i + 1;
            }
            _ => {
                out.push((segs, None));
                return i;
            }
        }
        if toks.get(i) == Some(&Tok::PathSep) {
            i += 1;
            continue;
        }
        // The end of a path: an optional rename, then whatever follows.
        let mut name = segs.last().cloned();
        if name.as_deref() == Some("self") {
            segs.pop();
            name = segs.last().cloned();
        }
        if ident(toks.get(i)) == Some("as") {
            name = ident(toks.get(i + 1)).map(str::to_owned);
            i += 2;
        }
        out.push((segs, name));
        return i;
    }
}

fn scan(src: &str) -> Scan {
    let toks = tokens(src);
    let mut scan = Scan::default();
    // Inline modules we are in: (name, brace depth inside them).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut cfg_test = false;
    let mut i = 0;
    while i < toks.len() {
        match &toks[i] {
            Tok::Other('#') if toks.get(i + 1) == Some(&Tok::Other('[')) => {
                let is_cfg_test = ident(toks.get(i + 2)) == Some("cfg")
                    && toks.get(i + 3) == Some(&Tok::Other('('))
                    && ident(toks.get(i + 4)) == Some("test")
                    && toks.get(i + 5) == Some(&Tok::Other(')'))
                    && toks.get(i + 6) == Some(&Tok::Other(']'));
                cfg_test |= is_cfg_test;
                // Skip the attribute; paths inside attributes (`#[serde(with = ..)]`) are not
                // module imports worth tracking.
                let mut j = i + 2;
                let mut nest = 1;
                while j < toks.len() && nest > 0 {
                    match toks[j] {
                        Tok::Other('[') => nest += 1,
                        Tok::Other(']') => nest -= 1,
                        _ => {}
                    }
                    j += 1;
                }
                i = j;
                continue;
            }
            Tok::Ident(w) if w == "pub" => {
                // Visibility: `pub`, `pub(crate)`, `pub(in path)`.
                i += 1;
                if toks.get(i) == Some(&Tok::Other('(')) {
                    while i < toks.len() && toks[i] != Tok::Other(')') {
                        i += 1;
                    }
                    i += 1;
                }
                continue;
            }
            Tok::Ident(w) if w == "mod" => {
                let name = ident(toks.get(i + 1)).unwrap_or_default().to_owned();
                match toks.get(i + 2) {
                    Some(Tok::Semi) => {
                        if cfg_test {
                            scan.test_children.insert(name);
                        }
                        i += 3;
                    }
                    Some(Tok::Open) if cfg_test => i = skip_group(&toks, i + 2),
                    Some(Tok::Open) => {
                        depth += 1;
                        inline.push((name, depth));
                        i += 3;
                    }
                    _ => i += 1,
                }
                cfg_test = false;
                continue;
            }
            Tok::Ident(w) if w == "use" => {
                let mut trees = Vec::new();
                i = parse_tree(&toks, i + 1, Vec::new(), &mut trees);
                for (segments, binds) in trees {
                    scan.paths.push(WrittenPath {
                        inline: inline.iter().map(|(n, _)| n.clone()).collect(),
                        segments,
                        binds,
                    });
                }
            }
            Tok::Ident(_) if i == 0 || toks[i - 1] != Tok::PathSep => {
                if toks.get(i + 1) == Some(&Tok::PathSep) {
                    let mut trees = Vec::new();
                    i = parse_tree(&toks, i, Vec::new(), &mut trees);
                    for (segments, _) in trees {
                        scan.paths.push(WrittenPath {
                            inline: inline.iter().map(|(n, _)| n.clone()).collect(),
                            segments,
                            binds: None,
                        });
                    }
                } else {
                    i += 1;
                }
            }
            Tok::Open => {
                depth += 1;
                i += 1;
            }
            Tok::Close => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
                i += 1;
            }
            _ => i += 1,
        }
        cfg_test = false;
    }
    scan
}

/// Every .rs file under src/, with its module path in the library (`main.rs` is the binary's root
/// and gets the path `["main"]`, outside the library's tree).
fn source_files(src: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read src/") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(src, &mut files);
    let mut modules = BTreeMap::new();
    for file in files {
        let rel = file
            .strip_prefix(src)
            .expect("under src/")
            .with_extension("");
        let mut parts: Vec<String> = rel
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        match parts.as_slice() {
            [only] if only == "lib" => parts.clear(),
            [only] if only == "main" => {}
            [.., last] if last == "mod" => {
                parts.pop();
            }
            _ => {}
        }
        modules.insert(parts, file);
    }
    modules
}

struct Graph {
    /// Which file imports which (paths relative to the repository, `src/...`).
    edges: BTreeSet<(String, String)>,
}

fn graph(root: &Path) -> Graph {
    let src = root.join("src");
    let modules = source_files(&src);
    let scans: BTreeMap<Vec<String>, Scan> = modules
        .iter()
        .map(|(m, f)| {
            (
                m.clone(),
                scan(&std::fs::read_to_string(f).expect("read source")),
            )
        })
        .collect();
    // Files declared under #[cfg(test)], and their descendants, are tests, not imports.
    let test_only: BTreeSet<Vec<String>> = scans
        .iter()
        .flat_map(|(m, s)| {
            s.test_children.iter().map(move |c| {
                let mut p = if m == &["main".to_owned()] {
                    vec![]
                } else {
                    m.clone()
                };
                p.push(c.clone());
                p
            })
        })
        .collect();
    let is_test = |m: &Vec<String>| test_only.iter().any(|t| m.starts_with(t));
    let rel = |m: &Vec<String>| {
        modules[m]
            .strip_prefix(root)
            .expect("under root")
            .to_string_lossy()
            .into_owned()
    };

    let mut edges = BTreeSet::new();
    for (module, scan) in &scans {
        if is_test(module) {
            continue;
        }
        let in_binary = module == &["main".to_owned()];
        // The library path a path written at `here` (the file's module plus inline modules)
        // starts at, and how many of its segments that consumed.
        let start =
            |here: &[String], segments: &[String], aliases: &BTreeMap<String, Vec<String>>| {
                let first = segments.first()?;
                match first.as_str() {
                    "crate" if !in_binary => Some((Vec::new(), 1)),
                    "meshcap" if in_binary => Some((Vec::new(), 1)),
                    "self" => Some((here.to_vec(), 1)),
                    "super" => {
                        let mut base = here.to_vec();
                        let mut n = 0;
                        while segments.get(n).map(String::as_str) == Some("super") {
                            base.pop()?;
                            n += 1;
                        }
                        Some((base, n))
                    }
                    name => {
                        let mut child = here.to_vec();
                        child.push(name.to_owned());
                        if !in_binary && modules.contains_key(&child) {
                            Some((here.to_vec(), 0))
                        } else {
                            aliases.get(name).map(|target| (target.clone(), 1))
                        }
                    }
                }
            };
        // The deepest file module a path reaches.
        let reach = |base: Vec<String>, rest: &[String]| {
            let mut m = base;
            let mut best = modules.contains_key(&m).then(|| m.clone());
            for seg in rest {
                m.push(seg.clone());
                if modules.contains_key(&m) {
                    best = Some(m.clone());
                } else {
                    break;
                }
            }
            best
        };
        let here_of = |inline: &[String]| {
            let mut h = if in_binary {
                Vec::new()
            } else {
                module.clone()
            };
            h.extend(inline.iter().cloned());
            h
        };
        // Names that `use` binds to file modules (`use crate::backend::session;`), so that
        // `session::Namespace` later counts as an import of session.rs.
        let no_aliases = BTreeMap::new();
        let mut aliases = BTreeMap::new();
        for p in scan.paths.iter().filter(|p| p.binds.is_some()) {
            let here = here_of(&p.inline);
            if let Some((base, used)) = start(&here, &p.segments, &no_aliases) {
                let mut full = base;
                full.extend(p.segments[used..].iter().cloned());
                if modules.contains_key(&full) {
                    aliases.insert(p.binds.clone().expect("filtered"), full);
                }
            }
        }
        for p in &scan.paths {
            let here = here_of(&p.inline);
            let Some((base, used)) = start(&here, &p.segments, &aliases) else {
                continue;
            };
            if let Some(target) = reach(base, &p.segments[used..]) {
                if &target != module && !(in_binary && target.is_empty()) {
                    edges.insert((rel(module), rel(&target)));
                }
            }
        }
    }
    // A scanner that found nothing would let every check below pass: the tree has well over a
    // hundred imports between its files.
    assert!(
        edges.len() > 100,
        "the scanner found only {} imports under {}",
        edges.len(),
        src.display()
    );
    Graph { edges }
}

fn top(file: &str) -> &str {
    let rel = file.strip_prefix("src/").unwrap_or(file);
    let first = rel.split('/').next().unwrap_or(rel);
    first.strip_suffix(".rs").unwrap_or(first)
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn no_two_files_import_each_other() {
    let g = graph(&repo());
    let mut pairs = Vec::new();
    for (a, b) in &g.edges {
        if a < b && g.edges.contains(&(b.clone(), a.clone())) {
            let allowed = ALLOWED_PAIRS.iter().any(|(x, y)| {
                (x, y) == (&a.as_str(), &b.as_str()) || (x, y) == (&b.as_str(), &a.as_str())
            });
            if !allowed {
                pairs.push(format!("{a} <-> {b}"));
            }
        }
    }
    assert!(
        pairs.is_empty(),
        "files that import each other:\n{}",
        pairs.join("\n")
    );
}

#[test]
fn no_import_cycles() {
    // Longer loops too (a -> b -> c -> a), inside a folder or across modules: every set of files
    // that reach each other, beyond an allowed pair.
    let g = graph(&repo());
    let mut out: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (a, b) in &g.edges {
        out.entry(a).or_default().insert(b);
    }
    let reach = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from];
        while let Some(n) = todo.pop() {
            for &next in out.get(n).into_iter().flatten() {
                if seen.insert(next) {
                    todo.push(next);
                }
            }
        }
        seen
    };
    let reached: BTreeMap<&str, BTreeSet<&str>> = out.keys().map(|&n| (n, reach(n))).collect();
    let mut cycles = BTreeSet::new();
    for (&n, from_n) in &reached {
        let cycle: Vec<&str> = from_n
            .iter()
            .copied()
            .filter(|m| reached.get(m).is_some_and(|r| r.contains(n)))
            .collect();
        let allowed = ALLOWED_PAIRS
            .iter()
            .any(|(x, y)| cycle.len() == 2 && cycle.contains(x) && cycle.contains(y));
        if cycle.len() > 1 && !allowed {
            cycles.insert(cycle.join(" -> "));
        }
    }
    assert!(
        cycles.is_empty(),
        "files that reach each other through imports:\n{}",
        cycles.into_iter().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn allowed_pairs_still_exist() {
    // An allow-list entry whose loop is gone must go too, or it hides the next one.
    let g = graph(&repo());
    for (a, b) in ALLOWED_PAIRS {
        let (a, b) = (a.to_string(), b.to_string());
        assert!(
            g.edges.contains(&(a.clone(), b.clone())) && g.edges.contains(&(b.clone(), a.clone())),
            "{a} and {b} no longer import each other: remove them from ALLOWED_PAIRS"
        );
    }
}

#[test]
fn no_module_imports_one_above_it() {
    let g = graph(&repo());
    let mut up = Vec::new();
    for (a, b) in &g.edges {
        let (ta, tb) = (top(a), top(b));
        let (Some(sa), Some(sb)) = (step(ta), step(tb)) else {
            up.push(format!(
                "{a} -> {b}: {ta} or {tb} has no step on the ladder"
            ));
            continue;
        };
        if sa < sb {
            up.push(format!("{a} -> {b}: {ta} imports {tb}, above it"));
        }
    }
    assert!(up.is_empty(), "imports up the ladder:\n{}", up.join("\n"));
}

/// The scanner itself, on small sources: what counts as an import and what does not.
mod scanner {
    use super::*;

    fn leaf_paths(src: &str) -> Vec<String> {
        scan(src)
            .paths
            .iter()
            .map(|p| p.segments.join("::"))
            .collect()
    }

    #[test]
    fn use_groups_nested_groups_self_and_renames() {
        let paths = scan("use super::{a::{B, c as d}, self as e, f::self}; use crate::x::*;").paths;
        let got: Vec<(String, Option<String>)> = paths
            .iter()
            .map(|p| (p.segments.join("::"), p.binds.clone()))
            .collect();
        let want = [
            ("super::a::B", Some("B")),
            ("super::a::c", Some("d")),
            ("super", Some("e")),
            ("super::f", Some("f")),
            ("crate::x", None),
        ];
        let want: Vec<(String, Option<String>)> = want
            .iter()
            .map(|(s, b)| (s.to_string(), b.map(str::to_owned)))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn paths_in_code_count_comments_strings_and_tests_do_not() {
        let src = r##"
            //! See crate::doc::Item.
            /* crate::block::Item /* nested */ crate::still::Comment */
            fn f<'a>(x: &'a str) -> char {
                let _ = "crate::string::Item";
                let _ = r#"crate::raw::Item"#;
                let _ = crate::plan::build(x);
                '{'
            }
            #[cfg(test)]
            mod tests {
                use crate::hidden::Item;
            }
            #[cfg(test)]
            mod file_tests;
        "##;
        assert_eq!(leaf_paths(src), ["crate::plan::build"]);
        assert!(scan(src).test_children.contains("file_tests"));
    }

    #[test]
    fn inline_modules_move_super() {
        let s = scan("mod inner { use super::X; } use self::y::Z;");
        assert_eq!(s.paths[0].inline, ["inner"]);
        assert!(s.paths[1].inline.is_empty());
    }
}
