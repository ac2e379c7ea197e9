//! Installing, reading back and removing ambient's iptables rules in the current namespace.
//!
//! What belongs to ambient: Istio's chains of the plan (ISTIO_PRERT and ISTIO_OUTPUT in a pod,
//! ISTIO_POSTRT on the node) in mangle, nat and raw, and the rules of the hook chains that jump
//! to them. Nothing else is read or touched.
//!
//! Every change is one `iptables-restore --noflush` per family whose input, table by table,
//! empties (or creates) those chains, deletes the jumps found, drops the chains the plan no
//! longer has and adds the plan's rules: a re-run with other settings replaces the old rules
//! within each table's commit, and a re-run with the same settings changes nothing at all.

use super::{Form, chain_name, command, created_chains, spell, table_name};
use crate::ambient::plan::{AmbientPlan, Chain, Op, Position, Table};
use crate::backend::iptables::{SavedTables, family_label, program, run};
use crate::backend::{Applied, BackendError, Ruleset, RulesetDiff};
use crate::config::IptablesVariant;
use crate::plan::Family;

const TABLES: [Table; 3] = [Table::Mangle, Table::Nat, Table::Raw];

/// The names of Istio's chains the plan uses (created or jumped to).
fn owned(plan: &AmbientPlan) -> Vec<&'static str> {
    let mut names = Vec::new();
    for op in &plan.ops {
        let target = match op.rule {
            crate::ambient::plan::Rule::Jump(t) => Some(t),
            _ => None,
        };
        for chain in std::iter::once(op.chain).chain(target) {
            if !chain.is_hook() && !names.contains(&chain_name(chain)) {
                names.push(chain_name(chain));
            }
        }
    }
    names
}

/// Whether a saved rule (`-A CHAIN … -j TARGET`) ends in a jump to one of `owned`.
fn jumps_to(rule: &str, owned: &[&str]) -> bool {
    let words: Vec<&str> = rule.split_whitespace().collect();
    matches!(words.as_slice(), [.., "-j", target] if owned.contains(target))
}

/// What `family` holds of ambient's, keyed `ipv4 nat ISTIO_OUTPUT`, in iptables-save spelling.
fn current(saved: &SavedTables, family: Family, owned: &[&str]) -> Ruleset {
    let mut ruleset = Ruleset::default();
    for ((table, chain), rules) in &saved.chains {
        if !TABLES.iter().any(|t| table_name(*t) == table) {
            continue;
        }
        let key = format!("{} {table} {chain}", family_label(family));
        if owned.contains(&chain.as_str()) {
            ruleset.chains.insert(key, rules.clone());
        } else {
            let jumps: Vec<String> = rules
                .iter()
                .filter(|r| jumps_to(r, owned))
                .cloned()
                .collect();
            if !jumps.is_empty() {
                ruleset.chains.insert(key, jumps);
            }
        }
    }
    ruleset
}

/// The plan of `family` in the same spelling and keys as what the namespace holds is read in.
pub fn expected(plan: &AmbientPlan, family: Family) -> Ruleset {
    let ops: Vec<&Op> = plan.ops_for(family).collect();
    let mut ruleset = Ruleset::default();
    for table in TABLES {
        let key = |chain: Chain| {
            format!(
                "{} {} {}",
                family_label(family),
                table_name(table),
                chain_name(chain)
            )
        };
        for chain in created_chains(&ops, table) {
            ruleset.chains.insert(key(chain), Vec::new());
        }
        for op in ops.iter().filter(|op| op.table == table) {
            let line = format!(
                "-A {} {}",
                chain_name(op.chain),
                spell(&op.rule, Form::Saved)
            );
            let rules = ruleset.chains.entry(key(op.chain)).or_default();
            match op.position {
                Position::Append => rules.push(line),
                Position::First => rules.insert(0, line),
            }
        }
    }
    ruleset
}

/// What `family` of `variant` holds of the plan's kind of rules (Istio's chains in mangle, nat
/// and raw, and the jumps to them), in [`expected`]'s spelling and keys.
pub fn read_back(
    plan: &AmbientPlan,
    family: Family,
    variant: IptablesVariant,
) -> Result<Ruleset, BackendError> {
    Ok(current(&save(family, variant)?, family, &owned(plan)))
}

fn save(family: Family, variant: IptablesVariant) -> Result<SavedTables, BackendError> {
    Ok(SavedTables::parse(&run(
        &program(family, variant, "save"),
        &[],
        None,
    )?))
}

/// The restore input that leaves exactly `ops` of ambient's in `family`: per table, Istio's
/// chains emptied or created, the jumps found deleted, the chains no longer planned deleted,
/// the planned rules added. Empty when nothing is there and nothing is planned.
fn restore_input(ops: &[&Op], saved: &SavedTables, owned: &[&str]) -> String {
    let mut text = String::new();
    for table in TABLES {
        let name = table_name(table);
        let planned: Vec<&str> = created_chains(ops, table)
            .into_iter()
            .map(chain_name)
            .collect();
        let in_table = || saved.chains.iter().filter(|((t, _), _)| t == name);
        let existing: Vec<&str> = in_table()
            .map(|((_, c), _)| c.as_str())
            .filter(|c| owned.contains(c))
            .collect();
        let jumps: Vec<&String> = in_table()
            .filter(|((_, c), _)| !owned.contains(&c.as_str()))
            .flat_map(|(_, rules)| rules.iter().filter(|r| jumps_to(r, owned)))
            .collect();
        let adds: Vec<&&Op> = ops.iter().filter(|op| op.table == table).collect();
        if adds.is_empty() && existing.is_empty() && jumps.is_empty() {
            continue;
        }
        let dropped: Vec<&str> = existing
            .iter()
            .copied()
            .filter(|c| !planned.contains(c))
            .collect();
        text.push_str(&format!("*{name}\n"));
        // Declaring a chain in restore input creates it, or empties it under --noflush.
        for chain in planned.iter().chain(&dropped) {
            text.push_str(&format!(":{chain} - [0:0]\n"));
        }
        for jump in jumps {
            text.push_str(&format!("-D{}\n", &jump[2..]));
        }
        for chain in &dropped {
            text.push_str(&format!("-X {chain}\n"));
        }
        for op in adds {
            text.push_str(&command(op));
            text.push('\n');
        }
        text.push_str("COMMIT\n");
    }
    text
}

fn restore(family: Family, variant: IptablesVariant, text: &str) -> Result<(), BackendError> {
    if text.is_empty() {
        return Ok(());
    }
    tracing::debug!("{} --noflush:\n{text}", program(family, variant, "restore"));
    run(
        &program(family, variant, "restore"),
        &["--noflush"],
        Some(text),
    )
    .map(|_| ())
}

/// The difference between what the namespace holds and the plan, for the plan's families.
pub fn diff(plan: &AmbientPlan, variant: IptablesVariant) -> Result<RulesetDiff, BackendError> {
    let owned = owned(plan);
    let mut have = Ruleset::default();
    let mut want = Ruleset::default();
    for family in plan.families() {
        have.chains
            .extend(current(&save(family, variant)?, family, &owned).chains);
        want.chains.extend(expected(plan, family).chains);
    }
    Ok(have.diff(&want))
}

/// Installs the plan's rules. A namespace already holding exactly them is left alone.
pub fn apply(plan: &AmbientPlan, variant: IptablesVariant) -> Result<Applied, BackendError> {
    let owned = owned(plan);
    let mut inputs = Vec::new();
    let mut in_place = true;
    let mut empty = true;
    for family in plan.families() {
        let saved = save(family, variant)?;
        let have = current(&saved, family, &owned);
        in_place &= have.diff(&expected(plan, family)).is_empty();
        empty &= have.chains.is_empty();
        let ops: Vec<&Op> = plan.ops_for(family).collect();
        inputs.push((family, restore_input(&ops, &saved, &owned)));
    }
    if in_place {
        return Ok(Applied::AlreadyInPlace);
    }
    for (family, text) in &inputs {
        if let Err(e) = restore(*family, variant, text) {
            // No half-installed pod: what the earlier families got goes again.
            if let Err(undo) = clean(plan, variant) {
                tracing::error!("could not remove the partly installed rules: {undo}");
            }
            return Err(e);
        }
    }
    Ok(if empty {
        Applied::Installed
    } else {
        Applied::Replaced
    })
}

/// Removes ambient's chains of the plan's kind and the jumps to them, in both families (IPv6 may
/// have been on when they were installed). A family whose tools are missing is skipped.
pub fn clean(plan: &AmbientPlan, variant: IptablesVariant) -> Result<(), BackendError> {
    let owned = owned(plan);
    for family in [Family::V4, Family::V6] {
        let saved = match save(family, variant) {
            Ok(saved) => saved,
            Err(e) if family == Family::V6 && !plan.ipv6 => {
                tracing::debug!("IPv6 not cleaned: {e}");
                continue;
            }
            Err(e) => return Err(e),
        };
        restore(family, variant, &restore_input(&[], &saved, &owned))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ambient::config::{NodeSettings, PodConfig, PodOverrides};
    use crate::ambient::plan;

    fn pod(dns: bool) -> AmbientPlan {
        plan::pod(&PodConfig::new(
            &NodeSettings {
                dns_capture: dns,
                ..NodeSettings::default()
            },
            &PodOverrides::default(),
        ))
    }

    #[test]
    fn replacing_drops_what_the_new_plan_lacks_and_keeps_foreign_rules() {
        // The namespace holds the DNS-capturing rules and a foreign rule; the plan has no DNS.
        let old = pod(true);
        let ops: Vec<&Op> = old.ops_for(Family::V4).collect();
        let mut saved_text = String::new();
        for table in TABLES {
            saved_text.push_str(&format!("*{}\n", table_name(table)));
            for (key, rules) in expected(&old, Family::V4).chains {
                if key.split(' ').nth(1) == Some(table_name(table)) {
                    saved_text.push_str(&format!(":{} - [0:0]\n", key.split(' ').nth(2).unwrap()));
                    for r in rules {
                        saved_text.push_str(&format!("{r}\n"));
                    }
                }
            }
            saved_text.push_str("-A OUTPUT -p tcp -j ACCEPT\nCOMMIT\n");
        }
        let saved = SavedTables::parse(&saved_text);
        let new = pod(false);
        let owned = owned(&new);
        let have = current(&saved, Family::V4, &owned);
        assert_eq!(have, expected(&old, Family::V4));
        let new_ops: Vec<&Op> = new.ops_for(Family::V4).collect();
        let text = restore_input(&new_ops, &saved, &owned);
        assert!(text.contains("*raw\n:ISTIO_OUTPUT - [0:0]\n:ISTIO_PRERT - [0:0]\n"));
        assert!(text.contains("-D PREROUTING -j ISTIO_PRERT\n"));
        assert!(text.contains("-X ISTIO_PRERT\n"));
        assert!(!text.contains("-D OUTPUT -p tcp -j ACCEPT"));
        assert!(!ops.is_empty());
        // Cleanup of the same namespace: every jump and chain goes, nothing is added.
        let cleanup = restore_input(&[], &saved, &owned);
        assert!(!cleanup.contains("-A "));
        assert_eq!(cleanup.matches("-X ").count(), 6);
    }
}
