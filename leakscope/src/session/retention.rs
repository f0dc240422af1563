//! Leak findings for a trace's final report: the heap read once from outside
//! (`census::Graph`), a retention chain for a few survivors of each growing site
//! (`model::chains`), the sites grouped by who holds whom (`model::findings`), and each
//! chain confirmed by reading its links again. The target is not paused.
use crate::census::graph::Graph;
use crate::census::{Allocator, Heap};
use crate::cpython::refs::{RefLayout, Via};
use crate::model::aggregate::{Aggregator, TypeRow};
use crate::model::chains::{self, Chain, End, Node};
use crate::model::findings::{self, Finding, Grower, SiteKey};
use crate::report::{ChainReport, FindingReport, LinkReport, RetentionInfo, SiteReport};
use crate::resolve::types::Resolver;
use crate::target::Mem;
use hashbrown::HashMap;

/// Survivors of each growing site whose chains are read.
pub const SAMPLES: usize = 3;

/// What the final report needs to read the heap.
pub struct Retention {
    heap: Heap,
    allocator: Option<Allocator>,
    layout: RefLayout,
    resolver: Resolver,
    mem: Mem,
}

impl Retention {
    pub fn new(
        heap: Heap,
        allocator: Option<Allocator>,
        version: crate::cpython::Version,
        resolver: Resolver,
        mem: Mem,
    ) -> Result<Retention, String> {
        let layout = RefLayout::of(version).ok_or_else(|| {
            format!(
                "references are read from Python 3.11 and 3.12 layouts only (this is {version})"
            )
        })?;
        Ok(Retention {
            heap,
            allocator,
            layout,
            resolver,
            mem,
        })
    }

    /// Findings for the growing `rows` (site rows), their sites' reports by key.
    pub fn findings(
        &mut self,
        agg: &Aggregator,
        rows: &[TypeRow],
        report_of: &dyn Fn(&TypeRow) -> SiteReport,
    ) -> (Vec<FindingReport>, RetentionInfo) {
        // Native blocks hold no Python references and are not held by any we can read:
        // they are reported as sites, without findings.
        let growing: Vec<&TypeRow> = rows
            .iter()
            .filter(|r| r.growing && r.live > 0 && !is_native(r.type_ptr))
            .collect();
        let keys: Vec<SiteKey> = growing.iter().map(|r| (r.type_ptr, r.site)).collect();
        let graph = Graph::read(
            self.layout,
            &self.heap,
            self.allocator.as_ref(),
            &agg.live()
                .into_iter()
                .filter(|&(_, t)| !is_native(t))
                .collect::<Vec<_>>(),
            &mut self.resolver,
            &*self.mem,
        );
        let samples = agg.samples(&keys, SAMPLES);
        let mut chains: HashMap<SiteKey, Vec<Chain>> = HashMap::new();
        for (&key, addrs) in &samples {
            chains.insert(
                key,
                addrs.iter().map(|&a| chains::find(&graph, a)).collect(),
            );
        }
        let growers: Vec<Grower> = growing
            .iter()
            .map(|r| Grower {
                key: (r.type_ptr, r.site),
                live: r.live,
                live_bytes: r.live_bytes,
                rate_per_s: r.rate_per_s,
                class: graph.is_instance_type(r.type_ptr),
                depth: report_of(r).frames.len(),
            })
            .collect();
        // A holder's site: the tracked object's; in sampled mode a holder born outside the
        // windows is untracked, and is taken for the one growing site of its class, if its
        // type is a Python class with exactly one.
        let mut by_type: HashMap<u64, Vec<SiteKey>> = HashMap::new();
        for k in &keys {
            by_type.entry(k.0).or_default().push(*k);
        }
        let owner = |a: u64| {
            agg.site_of(a).or_else(|| {
                let t = graph.type_of(a)?;
                let sites = by_type.get(&t)?;
                (sites.len() == 1 && graph.is_instance_type(t)).then(|| sites[0])
            })
        };
        let found = findings::group(&growers, &chains, &owner);
        let by_key: HashMap<SiteKey, &TypeRow> =
            growing.iter().map(|r| ((r.type_ptr, r.site), *r)).collect();
        let out = found
            .iter()
            .map(|f| self.finding_report(f, &graph, &by_key, report_of))
            .collect();
        let info = RetentionInfo {
            ms: graph.stats.ms,
            paused: false,
            objects: graph.stats.objects,
            references: graph.stats.edges,
            scanned: graph.stats.scanned,
            frames: graph.stats.frames,
            bounded: graph.stats.bounded,
            error: None,
        };
        (out, info)
    }

    fn finding_report(
        &mut self,
        f: &Finding,
        graph: &Graph,
        rows: &HashMap<SiteKey, &TypeRow>,
        report_of: &dyn Fn(&TypeRow) -> SiteReport,
    ) -> FindingReport {
        FindingReport {
            root: report_of(rows[&f.root]),
            retained: f.retained.iter().map(|k| report_of(rows[k])).collect(),
            objects: f.objects,
            bytes: f.bytes,
            rate_per_s: f.rate_per_s,
            bytes_per_s: f.bytes_per_s,
            chain: f
                .chain
                .as_ref()
                .map(|c| self.chain_report(c, graph, &rows[&f.root].name)),
        }
    }

    fn chain_report(&mut self, c: &Chain, graph: &Graph, start_name: &str) -> ChainReport {
        let mut links = vec![LinkReport {
            type_name: start_name.to_string(),
            address: format!("{:#x}", c.start),
            holds: String::new(),
            c_holder: false,
        }];
        let mut prev = c.start;
        let mut confirmed = true;
        for s in &c.steps {
            let native = graph.node(s.holder) == Node::Native;
            confirmed &= graph.holds(&*self.mem, s.holder, prev, s.via);
            links.push(LinkReport {
                type_name: self.holder_name(graph, s.holder),
                address: format!("{:#x}", s.holder),
                holds: self.via_text(graph, s.via, native, s.holder),
                c_holder: native && matches!(s.via, Via::Scanned(_)),
            });
            prev = s.holder;
        }
        ChainReport {
            kept_by: self.kept_by(c, graph),
            links,
            end: c.end,
            confirmed,
            through_c_holder: c.through_native,
        }
    }

    fn holder_name(&mut self, graph: &Graph, holder: u64) -> String {
        let t = graph.type_of(holder);
        let name = t
            .and_then(|t| graph.type_name(t))
            .unwrap_or("?")
            .to_string();
        match graph.node(holder) {
            Node::Module => format!("module {}", self.module_name(holder)),
            Node::Frame => format!("frame of {}", self.frame_name(graph, holder)),
            Node::Type => format!(
                "class {}",
                self.resolver
                    .get(holder)
                    .map_or("?".to_string(), |i| i.name.clone())
            ),
            _ => name,
        }
    }

    fn module_name(&self, module: u64) -> String {
        self.mem
            .u64(module + crate::cpython::refs::MODULE_NAME)
            .ok()
            .and_then(|s| self.resolver.ascii(s))
            .unwrap_or_else(|| "?".to_string())
    }

    /// A dict key or attribute name: a str's text, else its type.
    fn key_text(&mut self, graph: &Graph, key: u64) -> String {
        if let Some(s) = self.resolver.ascii(key)
            && graph
                .type_of(key)
                .and_then(|t| graph.type_name(t))
                .is_none_or(|n| n == "str")
        {
            return s;
        }
        let t = graph
            .type_of(key)
            .or_else(|| self.mem.u64(key + crate::cpython::OB_TYPE).ok());
        format!(
            "<{}>",
            t.and_then(|t| self.resolver.get(t).map(|i| i.name.clone()))
                .unwrap_or_else(|| "key".to_string())
        )
    }

    /// The name of slot `i` of the running frame `frame` (`co_localsplusnames[i]`), or
    /// "(value stack)" past the locals.
    fn local_name(&self, graph: &Graph, frame: u64, i: u32) -> String {
        let l = crate::cpython::refs::thread_layout(self.layout.version());
        (|| {
            let l = l?;
            let code = graph.code_of(&*self.mem, frame)?;
            let n = self.mem.u64(code + l.co_nlocalsplus).ok()? as u32;
            if i >= n {
                return Some("(value stack)".to_string());
            }
            let names = self.mem.u64(code + l.co_localsplusnames).ok()?;
            let name = self
                .mem
                .u64(names + crate::cpython::refs::TUPLE_ITEMS + 8 * i as u64)
                .ok()?;
            self.resolver.ascii(name)
        })()
        .unwrap_or_else(|| format!("#{i}"))
    }

    /// `qualname (thread N)` of a running frame.
    fn frame_name(&self, graph: &Graph, frame: u64) -> String {
        let l = crate::cpython::refs::thread_layout(self.layout.version());
        let (code, thread) = graph.frame(frame).unwrap_or((0, 0));
        let name = l
            .and_then(|l| l.stack.co_qualname.or(Some(l.stack.co_name)))
            .and_then(|off| self.mem.u64(code + off).ok())
            .and_then(|s| self.resolver.ascii(s))
            .unwrap_or_else(|| "?".to_string());
        format!("{name} (thread {})", thread + 1)
    }

    fn via_text(&mut self, graph: &Graph, via: Via, native: bool, holder: u64) -> String {
        match via {
            Via::Item(i) => format!("[{i}]"),
            Via::Member => "(member)".to_string(),
            Via::Key => "(key)".to_string(),
            Via::Value { key } => format!("['{}']", self.key_text(graph, key)),
            Via::Attr { key } => format!(".{}", self.key_text(graph, key)),
            Via::Field(name) => format!(".{name}"),
            Via::Slot(off) => format!("(slot +{off:#x})"),
            Via::Scanned(off) if native => format!("(+{off:#x})"),
            Via::Scanned(off) => format!("(scanned +{off:#x})"),
            Via::Local(i) => format!("local {}", self.local_name(graph, holder, i)),
        }
    }

    fn kept_by(&mut self, c: &Chain, graph: &Graph) -> String {
        let n = c.steps.len();
        // The key on the step before the root (a module's or a class's dict entry).
        let mut key = || {
            (n >= 2)
                .then(|| c.steps[n - 2].via)
                .and_then(|v| match v {
                    Via::Value { key } => Some(self.key_text(graph, key)),
                    _ => None,
                })
                .unwrap_or_else(|| "?".to_string())
        };
        match c.end {
            End::Module => {
                let k = key();
                format!("global {k} of module {}", self.module_name(c.steps[n - 1].holder))
            }
            End::Class => {
                let k = key();
                let class = self.holder_name(graph, c.steps[n - 1].holder);
                format!("attribute {k} of {class}")
            }
            End::Frame => {
                let frame = c.steps[n - 1];
                let local = match frame.via {
                    Via::Local(i) => self.local_name(graph, frame.holder, i),
                    _ => "?".to_string(),
                };
                format!("local {local} of {}, running", self.frame_name(graph, frame.holder))
            }
            End::Garbage => "gc.garbage (objects the collector could not free, kept there)".to_string(),
            End::Cycle if c.through_native => "a cycle through a C-level holder the collector does not traverse: a cycle the collector cannot break".to_string(),
            End::Cycle => "a reference cycle (the collector frees it once nothing else holds it)".to_string(),
            End::Unrooted => "no root among the objects read: the last holder is held from a thread's running frames, C memory or the interpreter's own state".to_string(),
            End::NoReferrer => match self.mem.u64(c.start) {
                // Immortal objects (3.12+) keep a refcount's low word all ones.
                Ok(n) if (1..crate::resolve::follow::MAX_REFCNT).contains(&n) => format!(
                    "no object refers to it, yet its reference count is {n}: a reference taken in C and never released (a reference-count leak in an extension), or C memory or a running frame holding it"
                ),
                _ => "no holder among the objects read: held from a thread's running frames or C memory".to_string(),
            },
        }
    }
}

/// A report saying why there are no chains.
pub fn unavailable(error: String) -> RetentionInfo {
    RetentionInfo {
        ms: 0.0,
        paused: false,
        objects: 0,
        references: 0,
        scanned: 0,
        frames: 0,
        bounded: false,
        error: Some(error),
    }
}

/// Rows of native blocks (`--native`), which have no Python references.
pub use leakscope_common::is_native;
