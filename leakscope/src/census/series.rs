//! Census counts across snapshots: objgraph's show_growth, with `trace`'s growth rule. Pure.
use super::walker::Counts;
use hashbrown::HashMap;

/// Objects a census cannot see, said in every census report.
pub const BLIND_SPOT: &str = "a census sees only objects the cycle collector tracks: ints, floats, \
    strings, bytes, dicts holding only atomic values, and objects of C types without GC support \
    are not on its lists (use `leakscope trace` for those)";

/// One type in a census report.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CensusRow {
    pub name: String,
    pub objects: u64,
    pub bytes: u64,
    /// Change since the previous snapshot and since the first one (objgraph's show_growth).
    pub delta_last: i64,
    pub delta_first: i64,
    /// Same rule as `trace` (aggregate::keeps_growing) over the snapshots' counts.
    pub growing: bool,
}

/// Counts per type across snapshots. Pure.
#[derive(Default)]
pub struct Series {
    snapshots: usize,
    history: HashMap<u64, Vec<u64>>,
}

impl Series {
    pub fn add(
        &mut self,
        counts: &Counts,
        name_of: &mut dyn FnMut(u64) -> String,
    ) -> Vec<CensusRow> {
        let n = self.snapshots;
        for &t in counts.keys() {
            self.history.entry(t).or_insert_with(|| vec![0; n]);
        }
        let mut rows = Vec::new();
        for (&t, h) in self.history.iter_mut() {
            let (objects, bytes) = counts.get(&t).copied().unwrap_or((0, 0));
            h.push(objects);
            let prev = if n > 0 { h[n - 1] } else { objects };
            if objects == 0 && prev == 0 {
                continue;
            }
            rows.push(CensusRow {
                name: name_of(t),
                objects,
                bytes,
                delta_last: objects as i64 - prev as i64,
                delta_first: objects as i64 - h[0] as i64,
                growing: crate::model::aggregate::keeps_growing(h, 0),
            });
        }
        self.snapshots += 1;
        rows.sort_by(|a, b| {
            b.growing
                .cmp(&a.growing)
                .then(b.delta_first.cmp(&a.delta_first))
                .then(b.bytes.cmp(&a.bytes))
                .then(a.name.cmp(&b.name))
        });
        rows
    }
}

/// Rows of a single set of counts (gc.garbage), largest first.
pub fn plain_rows(counts: &Counts, name_of: &mut dyn FnMut(u64) -> String) -> Vec<CensusRow> {
    let mut rows: Vec<CensusRow> = counts
        .iter()
        .map(|(&t, &(objects, bytes))| CensusRow {
            name: name_of(t),
            objects,
            bytes,
            delta_last: 0,
            delta_first: 0,
            growing: false,
        })
        .collect();
    rows.sort_by(|a, b| b.objects.cmp(&a.objects).then(a.name.cmp(&b.name)));
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pairs: &[(u64, u64)]) -> Counts {
        pairs.iter().map(|&(t, n)| (t, (n, n * 56))).collect()
    }

    #[test]
    fn show_growth_deltas_and_growing() {
        let mut series = Series::default();
        let mut name = |t: u64| format!("T{t}");
        let mut rows = vec![];
        for i in 0..6u64 {
            rows = series.add(
                &counts(&[(1, 1000 + 100 * i), (2, 500), (3, 40 + i % 2)]),
                &mut name,
            );
        }
        assert_eq!(rows[0].name, "T1");
        assert!(rows[0].growing);
        assert_eq!((rows[0].delta_last, rows[0].delta_first), (100, 500));
        let t2 = rows.iter().find(|r| r.name == "T2").unwrap();
        assert_eq!((t2.growing, t2.delta_last, t2.delta_first), (false, 0, 0));
        assert!(!rows.iter().find(|r| r.name == "T3").unwrap().growing);
    }

    #[test]
    fn a_type_that_disappears_shows_once_with_its_drop() {
        let mut series = Series::default();
        let mut name = |t: u64| format!("T{t}");
        series.add(&counts(&[(1, 10)]), &mut name);
        let rows = series.add(&counts(&[]), &mut name);
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].objects, rows[0].delta_last), (0, -10));
        assert!(series.add(&counts(&[]), &mut name).is_empty());
    }
}
