//! Allocation sites: symbolized Python stacks, interned so every report and output refers
//! to a site by a small id, and their folded-stack rendering. Pure.
use hashbrown::HashMap;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Frame {
    pub function: String,
    pub file: String,
    /// `None` where CPython reports no line for the instruction (or a native frame has no
    /// debug info).
    pub line: Option<i32>,
    /// A native frame's library (as the target names it); `None` for a Python frame. A
    /// native frame without debug info has an empty `file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub library: Option<String>,
}

fn base(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

impl Frame {
    pub fn python(function: String, file: String, line: Option<i32>) -> Frame {
        Frame {
            function,
            file,
            line,
            library: None,
        }
    }

    /// `function (file:line)` with the file's base name only; a native frame adds its
    /// library's: `function (file:line, libfoo.so)`.
    pub fn short_label(&self) -> String {
        self.render(base(&self.file), self.library.as_deref().map(base))
    }

    pub fn label(&self) -> String {
        self.render(&self.file, self.library.as_deref())
    }

    fn render(&self, file: &str, library: Option<&str>) -> String {
        let place = match (file.is_empty(), self.line) {
            (true, _) => String::new(),
            (false, Some(l)) => format!("{file}:{l}"),
            (false, None) => file.to_string(),
        };
        match (place.is_empty(), library) {
            (false, Some(lib)) => format!("{} ({place}, {lib})", self.function),
            (true, Some(lib)) => format!("{} ({lib})", self.function),
            (_, None) => format!("{} ({place})", self.function),
        }
    }
}

/// A symbolized stack, innermost frame first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Site {
    pub frames: Vec<Frame>,
    /// The walk stopped before the outermost frame (depth limit or unreadable frame).
    pub truncated: bool,
}

/// Interned sites; id 0 is "no stack captured".
pub struct Sites {
    list: Vec<Site>,
    index: HashMap<Site, u32>,
}

impl Default for Sites {
    fn default() -> Self {
        let none = Site::default();
        Sites {
            list: vec![none.clone()],
            index: HashMap::from_iter([(none, 0)]),
        }
    }
}

impl Sites {
    pub fn intern(&mut self, site: Site) -> u32 {
        if let Some(&id) = self.index.get(&site) {
            return id;
        }
        let id = self.list.len() as u32;
        self.list.push(site.clone());
        self.index.insert(site, id);
        id
    }

    pub fn get(&self, id: u32) -> &Site {
        &self.list[id as usize]
    }
}

/// Folded stacks (`outer;…;inner;leaf count`), sorted, one per `(site, leaf, count)`.
/// Flamegraph tools read this; `;` inside names is replaced so it cannot split a frame.
pub fn folded(entries: &[(&Site, String, u64)]) -> String {
    let paths: Vec<(&Site, Vec<String>, u64)> = entries
        .iter()
        .map(|(site, leaf, n)| (*site, vec![leaf.clone()], *n))
        .collect();
    folded_paths(&paths)
}

/// `folded` with several frames after the site's stack (a finding's root type, then what
/// it retains).
pub fn folded_paths(entries: &[(&Site, Vec<String>, u64)]) -> String {
    let clean = |s: &str| s.replace(';', ":");
    let mut lines: Vec<String> = entries
        .iter()
        .filter(|(_, _, count)| *count > 0)
        .map(|(site, leaves, count)| {
            let mut parts: Vec<String> = Vec::new();
            if site.frames.is_empty() {
                parts.push("[no Python stack]".into());
            }
            if site.truncated {
                parts.push("[truncated]".into());
            }
            parts.extend(site.frames.iter().rev().map(|f| clean(&f.label())));
            parts.extend(leaves.iter().map(|l| clean(l)));
            format!("{} {count}", parts.join(";"))
        })
        .collect();
    lines.sort();
    let mut out = lines.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(function: &str, line: i32) -> Frame {
        Frame {
            function: function.into(),
            file: "app.py".into(),
            line: Some(line),
            library: None,
        }
    }

    #[test]
    fn interning_gives_stable_ids() {
        let mut sites = Sites::default();
        let a = Site {
            frames: vec![f("leak", 3), f("main", 9)],
            truncated: false,
        };
        let b = Site {
            frames: vec![f("leak", 4), f("main", 9)],
            truncated: false,
        };
        assert_eq!(sites.intern(a.clone()), 1);
        assert_eq!(sites.intern(b), 2);
        assert_eq!(sites.intern(a.clone()), 1);
        assert_eq!(sites.get(1), &a);
        assert_eq!(sites.get(0).frames.len(), 0);
    }

    #[test]
    fn folded_snapshot() {
        let a = Site {
            frames: vec![f("Handler.leak", 3), f("<module>", 9)],
            truncated: false,
        };
        let deep = Site {
            frames: vec![f("rec", 5)],
            truncated: true,
        };
        let none = Site::default();
        let got = folded(&[
            (&deep, "dict (10 live)".into(), 640),
            (&a, "__main__.Leak (2,000 live)".into(), 112_000),
            (&none, "float (3 live)".into(), 72),
            (&a, "ignored".into(), 0),
        ]);
        let want = "\
<module> (app.py:9);Handler.leak (app.py:3);__main__.Leak (2,000 live) 112000
[no Python stack];float (3 live) 72
[truncated];rec (app.py:5);dict (10 live) 640
";
        assert_eq!(got, want);
    }

    #[test]
    fn semicolons_cannot_split_frames() {
        let s = Site {
            frames: vec![Frame::python("a;b".into(), "x;y.py".into(), None)],
            truncated: false,
        };
        assert_eq!(folded(&[(&s, "T".into(), 1)]), "a:b (x:y.py);T 1\n");
    }
}
