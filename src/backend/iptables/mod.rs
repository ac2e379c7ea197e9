//! The iptables backend: Istio's restore text, applied with `iptables-restore --noflush` and
//! `ip6tables-restore --noflush` of the legacy or nft variant, read back with `iptables-save`.

pub mod saved;
pub mod spell;

use super::firewall::{Applied, BackendError, Firewall, Ruleset, TypedRules};
use super::host::gid_of;
use super::routing;
use crate::config::IptablesVariant;
use crate::plan::{Family, FamilyPlan, Plan, Table};
use std::io::Write;
use std::process::{Command, Stdio};

/// How often apply re-plans when concurrent writers keep changing the state under it.
const MAX_ATTEMPTS: u32 = 3;

/// Why one apply attempt failed. Private to the retry loop in `apply`, which re-plans after a
/// race and otherwise returns the [`BackendError`] inside.
enum ApplyAttemptError {
    /// The restore failed because another writer changed the state after we read it.
    Raced(BackendError),
    /// Anything else; earlier steps were rolled back.
    Failed(BackendError),
}

/// How the iptables backend applies a plan.
#[derive(Clone, Debug)]
pub struct IptablesBackend {
    /// `None`: pick as Istio does (legacy when it already holds rules, else nft).
    pub variant: Option<IptablesVariant>,
    /// Replace rules of another configuration instead of refusing.
    pub reconcile: bool,
    /// Apply even when the rules are in place.
    pub force_apply: bool,
    /// How long iptables-legacy's restore waits for the xtables lock; `None`: as long as it
    /// takes (`--wait`). iptables-nft takes no such lock.
    pub xtables_wait: Option<std::time::Duration>,
}

fn family_prefix(family: Family) -> &'static str {
    match family {
        Family::V4 => "iptables",
        Family::V6 => "ip6tables",
    }
}

fn variant_suffix(variant: IptablesVariant) -> &'static str {
    match variant {
        IptablesVariant::Legacy => "legacy",
        IptablesVariant::Nft => "nft",
    }
}

/// The program name of a tool (`restore` or `save`) for a family and variant.
pub fn program(family: Family, variant: IptablesVariant, tool: &str) -> String {
    format!(
        "{}-{}-{tool}",
        family_prefix(family),
        variant_suffix(variant)
    )
}

/// Runs a program, feeding `stdin`, and returns its standard output.
pub(crate) fn run(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, BackendError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| BackendError::Spawn {
            program: program.to_owned(),
            reason: e.to_string(),
        })?;
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(text.as_bytes())
            .map_err(|e| BackendError::Spawn {
                program: program.to_owned(),
                reason: format!("writing its input: {e}"),
            })?;
    }
    let out = child.wait_with_output().map_err(|e| BackendError::Spawn {
        program: program.to_owned(),
        reason: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(BackendError::Command {
            program: format!("{program} {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a restore; a restore that gave up waiting for the xtables lock is [`BackendError::Busy`].
fn run_restore(
    program: &str,
    args: &[&str],
    text: &str,
    bound: Option<std::time::Duration>,
) -> Result<(), BackendError> {
    match run(program, args, Some(text)) {
        Ok(_) => Ok(()),
        // iptables says "Another app is currently holding the xtables lock. Stopped waiting
        // after Ns." and exits with status 4.
        Err(BackendError::Command { stderr, .. })
            if stderr.contains("holding the xtables lock") =>
        {
            Err(BackendError::Busy {
                what: format!("the xtables lock (/run/xtables.lock, for {program})"),
                waited: bound.unwrap_or_default(),
            })
        }
        Err(e) => Err(e),
    }
}

/// Rules and chains of an `iptables-save` text, per table.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SavedTables {
    /// (table, chain) → rules (`-A CHAIN …`) in order; every chain of the text is present.
    pub chains: Vec<((String, String), Vec<String>)>,
}

impl SavedTables {
    pub fn parse(text: &str) -> SavedTables {
        let mut saved = SavedTables::default();
        let mut table = String::new();
        for line in text.lines().map(str::trim) {
            if let Some(name) = line.strip_prefix('*') {
                table = name.trim().to_owned();
            } else if let Some(rest) = line.strip_prefix(':') {
                let chain = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                saved.chain_mut(&table, &chain);
            } else if let Some(rest) = line.strip_prefix("-A ") {
                let chain = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                saved.chain_mut(&table, &chain).push(line.to_owned());
            }
        }
        saved
    }

    fn chain_mut(&mut self, table: &str, chain: &str) -> &mut Vec<String> {
        let key = (table.to_owned(), chain.to_owned());
        if let Some(i) = self.chains.iter().position(|(k, _)| *k == key) {
            return &mut self.chains[i].1;
        }
        self.chains.push((key, Vec::new()));
        &mut self.chains.last_mut().expect("pushed").1
    }

    /// The first chain of Istio's (or meshcap's) the text declares.
    pub fn first_istio_chain(&self) -> Option<&str> {
        self.chains
            .iter()
            .map(|((_, chain), _)| chain.as_str())
            .find(|chain| is_istio_chain(chain))
    }

    /// Whether any chain of Istio's (or meshcap's) exists.
    pub fn has_istio_chains(&self) -> bool {
        self.chains
            .iter()
            .any(|((_, chain), _)| is_istio_chain(chain))
    }
}

/// Istio's chains all start with `ISTIO_`.
pub fn is_istio_chain(name: &str) -> bool {
    name.starts_with("ISTIO_")
}

fn jumps_to_istio(rule: &str) -> bool {
    rule.split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .any(|w| w[0] == "-j" && is_istio_chain(w[1]))
}

pub(crate) fn family_label(family: Family) -> &'static str {
    match family {
        Family::V4 => "ipv4",
        Family::V6 => "ipv6",
    }
}

/// The plan of one family in `iptables-save` spelling.
fn expected_family(plan: &FamilyPlan) -> Ruleset {
    let mut ruleset = Ruleset::default();
    for table in plan.tables() {
        for chain in plan.chains_with_rules(table) {
            let rules = plan
                .chain_rules(table, chain)
                .into_iter()
                .map(|(rule, _)| spell::saved_rule(chain, rule, plan.family, &gid_of))
                .collect();
            let key = format!(
                "{} {} {}",
                family_label(plan.family),
                spell::table_name(table),
                spell::chain_name(chain)
            );
            ruleset.chains.insert(key, rules);
        }
    }
    ruleset
}

/// The part of a saved family that is meshcap's: every ISTIO_ chain, and in the built-in chains
/// the rules that jump to one or that the plan would add (exclusions on interfaces, marks).
fn ours(saved: &SavedTables, family: Family, expected: &Ruleset) -> Ruleset {
    ours_by(saved, family, expected, |_, _, _| false)
}

/// As [`ours`], plus every built-in-chain rule of one of Istio's shapes, whatever values it
/// names: what another configuration (a pod's annotations) may have added.
fn ours_by_shape(saved: &SavedTables, family: Family, expected: &Ruleset) -> Ruleset {
    ours_by(saved, family, expected, istio_shaped)
}

/// Whether a rule of a built-in chain (iptables-save spelling) has one of the shapes Istio's
/// rules outside its own chains have: an excluded interface (`-i IF -j RETURN` in PREROUTING,
/// `-o IF -j RETURN` in OUTPUT, nat and mangle), and TPROXY's marks in mangle (CONNMARK save and
/// restore of a packet mark, the loopback RETURN of marked packets, the proxy's owner MARK).
fn istio_shaped(table: &str, chain: &str, rule: &str) -> bool {
    let words: Vec<&str> = rule.split_whitespace().skip(2).collect();
    let has = |pair: [&str; 2]| words.windows(2).any(|w| w == pair);
    match (table, chain, words.as_slice()) {
        ("nat" | "mangle", "PREROUTING", ["-i", _, "-j", "RETURN"])
        | ("nat" | "mangle", "OUTPUT", ["-o", _, "-j", "RETURN"]) => true,
        ("mangle", "PREROUTING" | "OUTPUT", _) if has(["-p", "tcp"]) => {
            let connmark = has(["-j", "CONNMARK"])
                && (words.contains(&"--save-mark") || words.contains(&"--restore-mark"))
                && (has(["-m", "mark"]) || has(["-m", "connmark"]));
            let loopback_return = chain == "OUTPUT"
                && has(["-o", "lo"])
                && has(["-m", "mark"])
                && words.ends_with(&["-j", "RETURN"]);
            let owner_mark = chain == "OUTPUT"
                && has(["-o", "lo"])
                && has(["-m", "owner"])
                && has(["-j", "MARK"]);
            connmark || loopback_return || owner_mark
        }
        _ => false,
    }
}

fn ours_by(
    saved: &SavedTables,
    family: Family,
    expected: &Ruleset,
    shaped: fn(&str, &str, &str) -> bool,
) -> Ruleset {
    let mut ruleset = Ruleset::default();
    for ((table, chain), rules) in &saved.chains {
        let key = format!("{} {table} {chain}", family_label(family));
        let planned = expected.chains.get(&key);
        let rules: Vec<String> = if is_istio_chain(chain) {
            rules.clone()
        } else {
            rules
                .iter()
                .filter(|r| {
                    jumps_to_istio(r)
                        || planned.is_some_and(|p| p.contains(r))
                        || shaped(table, chain, r)
                })
                .cloned()
                .collect()
        };
        if !rules.is_empty() || is_istio_chain(chain) {
            ruleset.chains.insert(key, rules);
        }
    }
    ruleset
}

/// Whether every chain of `have` holds a subsequence of the same chain of `want`.
fn is_part_of(have: &Ruleset, want: &Ruleset) -> bool {
    have.chains.iter().all(|(key, rules)| {
        let Some(planned) = want.chains.get(key) else {
            return false;
        };
        let mut rest = planned.iter();
        rules.iter().all(|r| rest.any(|p| p == r))
    })
}

/// A restore script (for `--noflush`) that deletes meshcap's rules from the built-in chains and
/// removes every ISTIO_ chain of the saved state.
fn cleanup_text(saved: &SavedTables, ours: &Ruleset, family: Family) -> String {
    let mut out = String::new();
    for table in Table::ALL.map(spell::table_name) {
        let chains: Vec<_> = saved
            .chains
            .iter()
            .filter(|((t, _), _)| t == table)
            .collect();
        let mut lines = Vec::new();
        for ((_, chain), rules) in &chains {
            if is_istio_chain(chain) {
                continue;
            }
            let key = format!("{} {table} {chain}", family_label(family));
            let mine = ours.chains.get(&key);
            for rule in rules.iter().filter(|r| mine.is_some_and(|m| m.contains(r))) {
                lines.push(format!("-D{}", &rule[2..]));
            }
        }
        let istio: Vec<&String> = chains
            .iter()
            .map(|((_, c), _)| c)
            .filter(|c| is_istio_chain(c))
            .collect();
        lines.extend(istio.iter().map(|c| format!("-F {c}")));
        lines.extend(istio.iter().map(|c| format!("-X {c}")));
        if !lines.is_empty() {
            out.push_str(&format!("*{table}\n{}\nCOMMIT\n", lines.join("\n")));
        }
    }
    out
}

impl IptablesBackend {
    /// The variant to use, decided as Istio does: the forced one; else legacy when
    /// iptables-legacy already holds rules (the node's tooling uses it), else nft.
    pub fn variant(&self) -> IptablesVariant {
        if let Some(v) = self.variant {
            return v;
        }
        let legacy_has_rules = [Family::V4, Family::V6].iter().any(|&f| {
            run(&program(f, IptablesVariant::Legacy, "save"), &[], None)
                .map(|text| text.lines().any(|l| l.starts_with("-A ")))
                .unwrap_or(false)
        });
        if legacy_has_rules {
            IptablesVariant::Legacy
        } else {
            IptablesVariant::Nft
        }
    }

    fn save(&self, family: Family, variant: IptablesVariant) -> Result<SavedTables, BackendError> {
        Ok(SavedTables::parse(&run(
            &program(family, variant, "save"),
            &[],
            None,
        )?))
    }

    /// One attempt: read the state, decide per family, restore, roll back on failure.
    fn apply_once(
        &self,
        plan: &Plan,
        variant: IptablesVariant,
    ) -> Result<Applied, ApplyAttemptError> {
        let mut outcome = Applied::Installed;
        let mut scripts = Vec::new();
        for family in plan.families() {
            let text = run(&program(family.family, variant, "save"), &[], None)
                .map_err(ApplyAttemptError::Failed)?;
            let saved = SavedTables::parse(&text);
            let mine = ours(&saved, family.family, &expected_family(family));
            let in_place = mine.diff(&expected_family(family)).is_empty();
            let script = if !saved.has_istio_chains() {
                spell::restore_text(family)
            } else if in_place && !self.force_apply {
                outcome = Applied::AlreadyInPlace;
                continue;
            } else if self.reconcile
                || self.force_apply
                || is_part_of(&mine, &expected_family(family))
            {
                // A part of this very plan is an install that was interrupted (killed between
                // two tables or families): completing it is what the operator wants, with or
                // without --reconcile.
                // One restore per family: the old rules go and the new come in one commit per table.
                outcome = Applied::Replaced;
                format!(
                    "{}{}",
                    cleanup_text(&saved, &mine, family.family),
                    spell::restore_text(family)
                )
            } else {
                return Err(ApplyAttemptError::Failed(BackendError::Conflict(format!(
                    "{} already holds Istio/meshcap chains of another configuration; \
                     run with --reconcile to replace them or --cleanup-only to remove them",
                    program(family.family, variant, "save")
                ))));
            };
            scripts.push((family.family, script, text));
        }
        // iptables-restore is atomic per table and family, not across families: when a later
        // step fails, put back what the earlier ones changed, so that the pod is left with its
        // old complete ruleset rather than half of the new one.
        let mut done: Vec<(Family, &str)> = Vec::new();
        let result = scripts
            .iter()
            .try_for_each(|(family, script, before)| {
                self.restore(*family, variant, script)?;
                done.push((*family, before));
                Ok(())
            })
            .and_then(|()| routing::apply(&plan.routing));
        if let Err(e) = result {
            // Another meshcap (or istio-init) wrote between our read and our restore: its
            // rules are complete, so re-plan from what is there instead of undoing anything.
            // A lock that stayed held is not a race: planning again would wait again, past the
            // caller's bound.
            let raced = !matches!(e, BackendError::Busy { .. })
                && scripts.iter().any(|(family, _, before)| {
                    run(&program(*family, variant, "save"), &[], None)
                        .is_ok_and(|now| now != *before)
                        && !done.iter().any(|(f, _)| f == family)
                });
            if raced {
                return Err(ApplyAttemptError::Raced(e));
            }
            for (family, before) in done.iter().rev() {
                if let Err(undo) = self.put_back(*family, variant, before) {
                    tracing::error!(
                        "could not restore the previous {} rules: {undo}",
                        family_label(*family)
                    );
                }
            }
            return Err(ApplyAttemptError::Failed(e));
        }
        Ok(outcome)
    }

    /// Restores a family's tables to a saved state: a flushing restore of every table the saved
    /// text names, and of every table meshcap touched that did not exist then (as empty).
    fn put_back(
        &self,
        family: Family,
        variant: IptablesVariant,
        saved: &str,
    ) -> Result<(), BackendError> {
        let present = SavedTables::parse(saved);
        let mut text = saved.to_owned();
        for table in Table::ALL.map(spell::table_name) {
            if !present.chains.iter().any(|((t, _), _)| t == table) {
                text.push_str(&format!("*{table}\nCOMMIT\n"));
            }
        }
        let wait = self.wait_args();
        let args: Vec<&str> = wait.iter().map(String::as_str).collect();
        run_restore(
            &program(family, variant, "restore"),
            &args,
            &text,
            self.xtables_wait,
        )
    }

    /// iptables-restore's wait for the xtables lock: bounded in whole seconds (its unit), at
    /// least one. (Its `-W` poll interval is deprecated and ignored since iptables 1.8.8.)
    fn wait_args(&self) -> Vec<String> {
        match self.xtables_wait {
            None => vec!["--wait".into()],
            Some(bound) => vec!["--wait".into(), bound.as_secs().max(1).to_string()],
        }
    }

    fn restore(
        &self,
        family: Family,
        variant: IptablesVariant,
        text: &str,
    ) -> Result<(), BackendError> {
        tracing::debug!(
            family = family_label(family),
            "iptables-restore input:\n{text}"
        );
        let wait = self.wait_args();
        let args: Vec<&str> = std::iter::once("--noflush")
            .chain(wait.iter().map(String::as_str))
            .collect();
        run_restore(
            &program(family, variant, "restore"),
            &args,
            text,
            self.xtables_wait,
        )
    }
}

impl Firewall for IptablesBackend {
    fn render(&self, plan: &Plan) -> String {
        let mut out = String::new();
        for family in plan.families() {
            let tool = match family.family {
                Family::V4 => "iptables-restore",
                Family::V6 => "ip6tables-restore",
            };
            out.push_str(&format!(
                "# {} rules: input of {tool} --noflush\n",
                family_label(family.family)
            ));
            out.push_str(&spell::restore_text(family));
        }
        out
    }

    fn apply(&self, plan: &Plan) -> Result<Applied, BackendError> {
        let _lock = super::lock::namespace_lock()?;
        let variant = self.variant();
        let mut attempt = 1;
        loop {
            match self.apply_once(plan, variant) {
                Ok(applied) => return Ok(applied),
                Err(ApplyAttemptError::Raced(e)) if attempt < MAX_ATTEMPTS => {
                    tracing::info!(
                        "another writer changed the rules meanwhile ({e}); planning again"
                    );
                    attempt += 1;
                }
                Err(ApplyAttemptError::Raced(e) | ApplyAttemptError::Failed(e)) => return Err(e),
            }
        }
    }

    fn read_back(&self, plan: &Plan) -> Result<Ruleset, BackendError> {
        let variant = self.variant();
        let mut all = Ruleset::default();
        for family in plan.families() {
            let saved = self.save(family.family, variant)?;
            all.chains
                .extend(ours(&saved, family.family, &expected_family(family)).chains);
        }
        Ok(all)
    }

    fn expected(&self, plan: &Plan) -> Ruleset {
        let mut all = Ruleset::default();
        for family in plan.families() {
            all.chains.extend(expected_family(family).chains);
        }
        all
    }

    fn read_typed(&self, plan: &Plan) -> Result<TypedRules, BackendError> {
        Ok(TypedRules::Iptables(saved::typed(
            &self.read_back(plan)?.chains,
        )))
    }

    fn expected_typed(&self, plan: &Plan) -> TypedRules {
        TypedRules::Iptables(saved::typed(&self.expected(plan).chains))
    }

    fn clean(&self, plan: &Plan) -> Result<(), BackendError> {
        self.clean_by(plan, ours)
    }

    fn clean_any(&self, plan: &Plan) -> Result<(), BackendError> {
        self.clean_by(plan, ours_by_shape)
    }
}

impl IptablesBackend {
    /// Removes what `mine` picks from each family's saved state, then the plan's routing.
    fn clean_by(
        &self,
        plan: &Plan,
        mine: fn(&SavedTables, Family, &Ruleset) -> Ruleset,
    ) -> Result<(), BackendError> {
        let _lock = super::lock::namespace_lock()?;
        let variant = self.variant();
        for family in [Family::V4, Family::V6] {
            let saved = match self.save(family, variant) {
                Ok(saved) => saved,
                // No ip6tables on the node: nothing of ours can be there.
                Err(BackendError::Spawn { .. }) if family == Family::V6 => continue,
                Err(e) => return Err(e),
            };
            let fam_plan = plan.families().find(|f| f.family == family);
            let expected = fam_plan.map(expected_family).unwrap_or_default();
            let script = cleanup_text(&saved, &mine(&saved, family, &expected), family);
            if !script.is_empty() {
                self.restore(family, variant, &script)?;
            }
        }
        routing::clean(&plan.routing)
    }
}

/// The iptables-legacy save program that shows an Istio (or meshcap) chain in the current
/// namespace, and the first such chain; `None` when no legacy table holds one. Rules installed
/// through iptables-legacy live in x_tables, outside nf_tables.
pub fn legacy_istio_chain() -> Option<(String, String)> {
    for (names, family) in [
        // The calling thread's namespace (/proc/net is the process's main thread's).
        ("/proc/thread-self/net/ip_tables_names", Family::V4),
        ("/proc/thread-self/net/ip6_tables_names", Family::V6),
    ] {
        // Reading the list loads nothing; the save program would load x_tables' modules.
        let tables = std::fs::read_to_string(names).unwrap_or_default();
        if tables.trim().is_empty() {
            continue;
        }
        let program = program(family, IptablesVariant::Legacy, "save");
        let saved = match run(&program, &[], None) {
            Ok(text) => SavedTables::parse(&text),
            Err(e) => {
                tracing::warn!("{e}; cannot tell whether iptables-legacy holds Istio rules");
                continue;
            }
        };
        if let Some(chain) = saved.first_istio_chain() {
            return Some((program, chain.to_owned()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::{SavedTables, istio_shaped};

    #[test]
    fn finds_istio_chains_only() {
        let saved =
            "*nat\n:PREROUTING ACCEPT [0:0]\n:ISTIO_INBOUND - [0:0]\n-A PREROUTING -j X\nCOMMIT\n";
        assert_eq!(
            SavedTables::parse(saved).first_istio_chain(),
            Some("ISTIO_INBOUND")
        );
        let plain = SavedTables::parse("*nat\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n");
        assert_eq!(plain.first_istio_chain(), None);
    }

    #[test]
    fn istio_shapes_are_recognised_whatever_their_values() {
        let ours = [
            ("nat", "-A PREROUTING -i net1 -j RETURN"),
            ("mangle", "-A OUTPUT -o eth7 -j RETURN"),
            (
                "mangle",
                "-A PREROUTING -p tcp -m mark --mark 0x63 -j CONNMARK --save-mark --nfmask 0xffffffff --ctmask 0xffffffff",
            ),
            (
                "mangle",
                "-A OUTPUT -p tcp -m connmark --mark 0x63 -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff",
            ),
            (
                "mangle",
                "-A OUTPUT -o lo -p tcp -m mark --mark 0x63 -j RETURN",
            ),
            (
                "mangle",
                "-A OUTPUT ! -d ::1/128 -o lo -p tcp -m owner --uid-owner 1400 -j MARK --set-xmark 0x64/0xffffffff",
            ),
        ];
        for (table, rule) in ours {
            let chain = rule.split_whitespace().nth(1).unwrap();
            assert!(istio_shaped(table, chain, rule), "{table}: {rule}");
        }
        let theirs = [
            ("filter", "-A INPUT -i eth0 -j RETURN"),
            ("nat", "-A PREROUTING -i eth0 -p tcp -j RETURN"),
            ("nat", "-A OUTPUT -p tcp -j DNAT --to-destination 192.0.2.1"),
            ("mangle", "-A PREROUTING -p udp -j CONNMARK --save-mark"),
            (
                "mangle",
                "-A OUTPUT -p tcp -j MARK --set-xmark 0x1/0xffffffff",
            ),
        ];
        for (table, rule) in theirs {
            let chain = rule.split_whitespace().nth(1).unwrap();
            assert!(!istio_shaped(table, chain, rule), "{table}: {rule}");
        }
    }
}
