//! One finding per leak: growing sites grouped by who holds whom. Pure.
//!
//! Each growing site's sampled survivors have retention chains (`chains`). A site is
//! *retained* by another growing site when, on most of its samples' chains, an object of
//! that other site holds it (the outermost such holder counts: a leaked record holding a
//! dict holding strings puts the strings under the record, not under the dict). A site
//! nothing growing holds is a *root*: what a developer must fix. A finding is a root and
//! every site it retains, with the group's totals, ranked by the bytes the group gains a
//! second.
use super::chains::{Chain, End};
use crate::cpython::refs::Via;
use hashbrown::HashMap;

/// A site: (type object, allocation site id).
pub type SiteKey = (u64, u32);

/// A growing site, as the report counted it.
#[derive(Clone, Debug)]
pub struct Grower {
    pub key: SiteKey,
    pub live: u64,
    pub live_bytes: u64,
    pub rate_per_s: f64,
    /// An instance of a Python class (not a builtin or C type).
    pub class: bool,
    /// Frames of its allocation site.
    pub depth: usize,
}

impl Grower {
    /// Bytes gained a second (objects a second × their mean size).
    pub fn bytes_rate(&self) -> f64 {
        if self.live == 0 {
            0.0
        } else {
            self.rate_per_s * self.live_bytes as f64 / self.live as f64
        }
    }
}

#[derive(Clone, Debug)]
pub struct Finding {
    pub root: SiteKey,
    /// Retained sites, largest first (not the root).
    pub retained: Vec<SiteKey>,
    pub objects: u64,
    pub bytes: u64,
    pub rate_per_s: f64,
    pub bytes_per_s: f64,
    /// The root's chain (from one of its samples: a rooted one if any).
    pub chain: Option<Chain>,
}

/// Groups `growers` into findings. `chains[key]`: the chains of that site's samples;
/// `owner(addr)`: the growing site of a tracked live object, if it is one.
pub fn group(
    growers: &[Grower],
    chains: &HashMap<SiteKey, Vec<Chain>>,
    owner: &dyn Fn(u64) -> Option<SiteKey>,
) -> Vec<Finding> {
    let growing: HashMap<SiteKey, usize> = growers
        .iter()
        .enumerate()
        .map(|(i, g)| (g.key, i))
        .collect();
    // holder[i] = the site that retains site i, by majority of its samples.
    let mut holder: Vec<Option<usize>> = vec![None; growers.len()];
    for (i, g) in growers.iter().enumerate() {
        let Some(cs) = chains.get(&g.key) else {
            continue;
        };
        let mut votes: HashMap<usize, usize> = HashMap::new();
        for c in cs {
            let outer = c
                .steps
                .iter()
                .filter_map(|s| owner(s.holder))
                .filter_map(|k| growing.get(&k).copied())
                .filter(|&j| j != i)
                .last();
            if let Some(j) = outer {
                *votes.entry(j).or_default() += 1;
            }
        }
        if let Some((&j, &n)) = votes
            .iter()
            .max_by_key(|&(&j, &n)| (n, std::cmp::Reverse(j)))
            && 2 * n > cs.len()
        {
            holder[i] = Some(j);
        }
    }
    // Root of each site: follow holders. Sites that hold each other in a loop (a cycle)
    // have as root the one a developer would fix: a Python class's site before builtins
    // and C types, then the shallowest stack (the creator, not what its constructor made).
    let root_of = |mut i: usize| {
        let mut seen = vec![i];
        while let Some(j) = holder[i] {
            if seen.contains(&j) {
                let at = seen.iter().position(|&k| k == j).unwrap();
                return *seen[at..]
                    .iter()
                    .min_by_key(|&&k| (!growers[k].class, growers[k].depth, k))
                    .unwrap();
            }
            seen.push(j);
            i = j;
        }
        i
    };
    let mut groups: HashMap<usize, Vec<usize>> = HashMap::new();
    for i in 0..growers.len() {
        groups.entry(root_of(i)).or_default().push(i);
    }
    let mut findings: Vec<Finding> = groups
        .into_iter()
        .map(|(r, members)| {
            let mut retained: Vec<usize> = members.iter().copied().filter(|&m| m != r).collect();
            retained.sort_by(|&a, &b| {
                growers[b]
                    .bytes_rate()
                    .total_cmp(&growers[a].bytes_rate())
                    .then(a.cmp(&b))
            });
            let sum =
                |f: &dyn Fn(&Grower) -> f64| members.iter().map(|&m| f(&growers[m])).sum::<f64>();
            let chain = chains.get(&growers[r].key).and_then(|cs| {
                cs.iter()
                    .find(|c| !matches!(c.end, End::Unrooted | End::NoReferrer))
                    .or(cs.first())
                    .cloned()
            });
            Finding {
                root: growers[r].key,
                retained: retained.iter().map(|&m| growers[m].key).collect(),
                objects: sum(&|g| g.live as f64) as u64,
                bytes: sum(&|g| g.live_bytes as f64) as u64,
                rate_per_s: sum(&|g| g.rate_per_s),
                bytes_per_s: sum(&|g| g.bytes_rate()),
                chain,
            }
        })
        .collect();
    findings.sort_by(|a, b| {
        b.bytes_per_s
            .total_cmp(&a.bytes_per_s)
            .then(b.bytes.cmp(&a.bytes))
            .then(a.root.cmp(&b.root))
    });
    merge_by_container(findings, growers)
}

/// The container a finding's root sits in: the first holder on its chain, when it holds
/// the root as an entry (a dict's key or value, a list's item, a set's member).
fn container(f: &Finding) -> Option<u64> {
    let first = f.chain.as_ref()?.steps.first()?;
    matches!(
        first.via,
        Via::Key | Via::Value { .. } | Via::Item(_) | Via::Member
    )
    .then_some(first.holder)
}

/// Roots that sit in the same container are one leak (a dict's keys and its values, say):
/// the first-ranked stays the root, the others join what it retains.
fn merge_by_container(findings: Vec<Finding>, growers: &[Grower]) -> Vec<Finding> {
    let mut out: Vec<Finding> = vec![];
    let mut at: HashMap<u64, usize> = HashMap::new();
    for f in findings {
        match container(&f).and_then(|c| at.get(&c).copied()) {
            Some(i) => {
                let g = &mut out[i];
                g.retained.push(f.root);
                g.retained.extend(f.retained);
                g.objects += f.objects;
                g.bytes += f.bytes;
                g.rate_per_s += f.rate_per_s;
                g.bytes_per_s += f.bytes_per_s;
            }
            None => {
                if let Some(c) = container(&f) {
                    at.insert(c, out.len());
                }
                out.push(f);
            }
        }
    }
    let rate: HashMap<SiteKey, f64> = growers.iter().map(|g| (g.key, g.bytes_rate())).collect();
    for f in &mut out {
        f.retained
            .sort_by(|a, b| rate[b].total_cmp(&rate[a]).then(a.cmp(b)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::chains::Step;

    fn grower(t: u64, live: u64, bytes_each: u64, rate: f64) -> Grower {
        Grower {
            key: (t, 1),
            live,
            live_bytes: live * bytes_each,
            rate_per_s: rate,
            class: false,
            depth: 3,
        }
    }

    fn chain(start: u64, holders: &[u64], end: End) -> Chain {
        Chain {
            start,
            steps: holders
                .iter()
                .map(|&h| Step {
                    holder: h,
                    via: Via::Item(0),
                })
                .collect(),
            end,
            through_native: false,
            visited: 0,
        }
    }

    #[test]
    fn strings_and_dict_of_a_leaked_record_group_under_the_record() {
        // Sites: str (fast, first by rate), dict, float, Record. Objects: record 100 holds
        // dict 200 (its __dict__) holding str 300 and float 400; the record is in a module
        // dict 900 of module 901 (not tracked: born before attach).
        let growers = vec![
            grower(3, 2000, 60, 200.0),  // str
            grower(2, 1000, 100, 100.0), // dict
            grower(4, 1000, 24, 100.0),  // float
            grower(1, 1000, 48, 100.0),  // Record
        ];
        let mut chains = HashMap::new();
        chains.insert((3, 1), vec![chain(300, &[200, 100, 900, 901], End::Module)]);
        chains.insert((2, 1), vec![chain(200, &[100, 900, 901], End::Module)]);
        chains.insert((4, 1), vec![chain(400, &[200, 100, 900, 901], End::Module)]);
        chains.insert((1, 1), vec![chain(100, &[900, 901], End::Module)]);
        let owner = |a: u64| match a {
            100 => Some((1, 1)),
            200 => Some((2, 1)),
            300 => Some((3, 1)),
            400 => Some((4, 1)),
            _ => None,
        };
        let f = group(&growers, &chains, &owner);
        assert_eq!(f.len(), 1, "one finding");
        assert_eq!(f[0].root, (1, 1), "the record first");
        assert_eq!(
            f[0].retained,
            vec![(3, 1), (2, 1), (4, 1)],
            "by bytes a second"
        );
        assert_eq!(f[0].objects, 5000);
        assert_eq!(f[0].chain.as_ref().unwrap().end, End::Module);
    }

    #[test]
    fn a_cycle_of_sites_is_rooted_at_the_python_class_that_made_it() {
        // method 10 (site 1) ← handle 20 (site 2, C) ← owner 30 (site 3, class) ← method 10
        let mut growers = vec![
            grower(1, 10, 48, 1.0),
            grower(2, 10, 32, 1.0),
            grower(3, 10, 56, 1.0),
        ];
        growers[2].class = true;
        growers[2].depth = 2;
        let mut chains = HashMap::new();
        chains.insert((1, 1), vec![chain(10, &[20, 30, 10], End::Cycle)]);
        chains.insert((2, 1), vec![chain(20, &[30, 10, 20], End::Cycle)]);
        chains.insert((3, 1), vec![chain(30, &[10, 20, 30], End::Cycle)]);
        let owner = |a: u64| Some(((a / 10), 1));
        let f = group(&growers, &chains, &owner);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].root, (3, 1));
        assert_eq!(f[0].chain.as_ref().unwrap().start, 30);
    }

    #[test]
    fn roots_in_the_same_container_are_one_finding() {
        // d["r1"] = Record(): the key strings and the records both sit in dict 900.
        let growers = vec![grower(1, 100, 48, 10.0), grower(2, 100, 40, 10.0)];
        let mut chains = HashMap::new();
        let entry = |start: u64, via: Via| Chain {
            start,
            steps: vec![
                Step { holder: 900, via },
                Step {
                    holder: 901,
                    via: Via::Field("__dict__"),
                },
            ],
            end: End::Module,
            through_native: false,
            visited: 0,
        };
        chains.insert((1, 1), vec![entry(10, Via::Value { key: 20 })]);
        chains.insert((2, 1), vec![entry(20, Via::Key)]);
        let f = group(&growers, &chains, &|_| None);
        assert_eq!(f.len(), 1);
        assert_eq!((f[0].root, f[0].retained.clone()), ((1, 1), vec![(2, 1)]));
        assert_eq!(f[0].objects, 200);
    }

    #[test]
    fn unrelated_leaks_are_separate_findings_ranked_by_bytes_a_second() {
        let growers = vec![grower(1, 100, 10, 1.0), grower(2, 100, 1000, 1.0)];
        let chains = HashMap::new();
        let f = group(&growers, &chains, &|_| None);
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].root, (2, 1));
        assert!(f[0].chain.is_none());
    }

    #[test]
    fn a_minority_of_samples_does_not_move_a_site() {
        let growers = vec![grower(1, 10, 10, 1.0), grower(2, 10, 10, 1.0)];
        let mut chains = HashMap::new();
        chains.insert(
            (2, 1),
            vec![
                chain(20, &[10], End::Unrooted),
                chain(21, &[50], End::Unrooted),
                chain(22, &[51], End::Unrooted),
            ],
        );
        let owner = |a: u64| (a == 10).then_some((1, 1));
        assert_eq!(group(&growers, &chains, &owner).len(), 2);
    }
}
