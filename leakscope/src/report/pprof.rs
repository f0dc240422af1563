//! `--pprof FILE`: the final report's sites as a gzip-compressed pprof `profile.proto`, for
//! `go tool pprof`, Pyroscope, Parca and Grafana. Pure: sites in, bytes out.
//!
//! One sample per site (the same sites the flamegraph draws: the growing ones, or every
//! surviving one when none grows), with three values: `inuse_objects` (live objects),
//! `inuse_space` (their bytes, the default) and `growth_objects` (objects per second, the
//! site's rate, rounded). Its stack is the site's frames (Python, and native frames with
//! their library as the mapping's file) under a leaf location named for the type, so that
//! `pprof -top` lists types and `-traces` whole sites; labels `type`, `growing` and, for a
//! site in a leak finding, `finding` (the finding's root: its type and line).
//!
//! The messages are `perftools.profiles` (github.com/google/pprof `proto/profile.proto`),
//! declared here for prost's derive with their field numbers; only the fields leakscope
//! writes are declared (a reader skips nothing it needs).
use crate::model::sites::Frame;
use hashbrown::HashMap;
use prost::Message;
use std::io::Write;

#[derive(Clone, PartialEq, Message)]
pub struct Profile {
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    pub mapping: Vec<Mapping>,
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    #[prost(int64, repeated, tag = "13")]
    pub comment: Vec<i64>,
    #[prost(int64, tag = "14")]
    pub default_sample_type: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct ValueType {
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Sample {
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<Label>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Label {
    #[prost(int64, tag = "1")]
    pub key: i64,
    #[prost(int64, tag = "2")]
    pub str: i64,
    #[prost(int64, tag = "3")]
    pub num: i64,
    #[prost(int64, tag = "4")]
    pub num_unit: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Mapping {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub memory_start: u64,
    #[prost(uint64, tag = "3")]
    pub memory_limit: u64,
    #[prost(uint64, tag = "4")]
    pub file_offset: u64,
    #[prost(int64, tag = "5")]
    pub filename: i64,
    #[prost(int64, tag = "6")]
    pub build_id: i64,
    #[prost(bool, tag = "7")]
    pub has_functions: bool,
    #[prost(bool, tag = "8")]
    pub has_filenames: bool,
    #[prost(bool, tag = "9")]
    pub has_line_numbers: bool,
    #[prost(bool, tag = "10")]
    pub has_inline_frames: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct Location {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub mapping_id: u64,
    #[prost(uint64, tag = "3")]
    pub address: u64,
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Line {
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    #[prost(int64, tag = "2")]
    pub line: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Function {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "2")]
    pub name: i64,
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    #[prost(int64, tag = "4")]
    pub filename: i64,
    #[prost(int64, tag = "5")]
    pub start_line: i64,
}

/// One site as the profile takes it.
pub struct PprofSite<'a> {
    pub type_name: &'a str,
    /// Innermost first.
    pub frames: &'a [Frame],
    pub live: u64,
    pub live_bytes: u64,
    pub rate_per_s: f64,
    pub growing: bool,
    /// The leak finding the site belongs to (its root, in words), if any.
    pub finding: Option<String>,
}

/// The sample types, in value order; `inuse_space` is the default.
pub const SAMPLE_TYPES: [(&str, &str); 3] = [
    ("inuse_objects", "count"),
    ("inuse_space", "bytes"),
    ("growth_objects", "count"),
];

#[derive(Default)]
struct Builder {
    strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    functions: Vec<Function>,
    function_ids: HashMap<(i64, i64), u64>,
    locations: Vec<Location>,
    location_ids: HashMap<(u64, i64, u64), u64>,
    mappings: Vec<Mapping>,
    mapping_ids: HashMap<i64, u64>,
}

impl Builder {
    fn s(&mut self, s: &str) -> i64 {
        if self.strings.is_empty() {
            self.strings.push(String::new());
            self.string_ids.insert(String::new(), 0);
        }
        if let Some(&i) = self.string_ids.get(s) {
            return i;
        }
        let i = self.strings.len() as i64;
        self.strings.push(s.to_string());
        self.string_ids.insert(s.to_string(), i);
        i
    }

    fn mapping(&mut self, library: &str) -> u64 {
        let file = self.s(library);
        let next = self.mappings.len() as u64 + 1;
        *self.mapping_ids.entry(file).or_insert_with(|| {
            self.mappings.push(Mapping {
                id: next,
                filename: file,
                has_functions: true,
                has_filenames: true,
                has_line_numbers: true,
                ..Default::default()
            });
            next
        })
    }

    fn location(&mut self, function: &str, file: &str, line: i64, library: Option<&str>) -> u64 {
        let (name, file) = (self.s(function), self.s(file));
        let next = self.functions.len() as u64 + 1;
        let function_id = *self.function_ids.entry((name, file)).or_insert_with(|| {
            // No system name: pprof demangles a function whose system name is its name, and
            // its C++ simplification takes `<module>` for template arguments (`<unknown>`).
            self.functions.push(Function {
                id: next,
                name,
                system_name: 0,
                filename: file,
                start_line: 0,
            });
            next
        });
        let mapping_id = library.map_or(0, |l| self.mapping(l));
        let next = self.locations.len() as u64 + 1;
        *self
            .location_ids
            .entry((function_id, line, mapping_id))
            .or_insert_with(|| {
                self.locations.push(Location {
                    id: next,
                    mapping_id,
                    address: 0,
                    line: vec![Line { function_id, line }],
                });
                next
            })
    }
}

/// The profile of `sites`, traced for `duration_nanos` from `time_nanos` (Unix time).
pub fn profile(sites: &[PprofSite], time_nanos: i64, duration_nanos: i64) -> Profile {
    let mut b = Builder::default();
    let sample_type = SAMPLE_TYPES
        .iter()
        .map(|(t, u)| ValueType {
            r#type: b.s(t),
            unit: b.s(u),
        })
        .collect();
    let (k_type, k_growing, k_finding) = (b.s("type"), b.s("growing"), b.s("finding"));
    let mut samples = vec![];
    for site in sites {
        let mut stack = vec![b.location(site.type_name, "", 0, None)];
        for f in site.frames {
            let line = f.line.map_or(0, i64::from);
            let file = if f.file.is_empty() {
                f.library.as_deref().unwrap_or("")
            } else {
                &f.file
            };
            stack.push(b.location(&f.function, file, line, f.library.as_deref()));
        }
        let mut label = vec![
            Label {
                key: k_type,
                str: b.s(site.type_name),
                ..Default::default()
            },
            Label {
                key: k_growing,
                str: b.s(if site.growing { "yes" } else { "no" }),
                ..Default::default()
            },
        ];
        if let Some(f) = &site.finding {
            label.push(Label {
                key: k_finding,
                str: b.s(f),
                ..Default::default()
            });
        }
        samples.push(Sample {
            location_id: stack,
            value: vec![
                site.live as i64,
                site.live_bytes as i64,
                site.rate_per_s.round() as i64,
            ],
            label,
        });
    }
    let comment = vec![b.s(
        "leakscope: live objects and bytes of each allocation site born since attach; \
         growth_objects is the site's rate, objects per second",
    )];
    let default_sample_type = b.s("inuse_space");
    Profile {
        sample_type,
        sample: samples,
        mapping: b.mappings,
        location: b.locations,
        function: b.functions,
        string_table: b.strings,
        time_nanos,
        duration_nanos,
        comment,
        default_sample_type,
    }
}

/// The profile, encoded and gzip-compressed (as pprof files are on disk).
pub fn encode(p: &Profile) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&p.encode_to_vec())
        .expect("writing into memory");
    gz.finish().expect("writing into memory")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn frame(function: &str, file: &str, line: i32, library: Option<&str>) -> Frame {
        Frame {
            function: function.into(),
            file: file.into(),
            line: Some(line),
            library: library.map(Into::into),
        }
    }

    #[test]
    fn sites_become_samples_under_their_type_with_shared_locations() {
        let leak = [
            frame("serve", "/app/leak.py", 44, None),
            frame("<module>", "/app/leak.py", 60, None),
        ];
        let native = [
            frame("leak_buffer", "/src/ext.c", 24, Some("/app/ext.so")),
            frame("serve", "/app/leak.py", 36, None),
            frame("<module>", "/app/leak.py", 60, None),
        ];
        let sites = [
            PprofSite {
                type_name: "PacedLeak",
                frames: &leak,
                live: 1200,
                live_bytes: 67_200,
                rate_per_s: 99.6,
                growing: true,
                finding: Some("PacedLeak at leak.py:44".into()),
            },
            PprofSite {
                type_name: "native heap",
                frames: &native,
                live: 10,
                live_bytes: 40_960,
                rate_per_s: 0.4,
                growing: false,
                finding: None,
            },
        ];
        let bytes = encode(&profile(&sites, 1_700_000_000_000_000_000, 20_000_000_000));
        let mut raw = vec![];
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_end(&mut raw)
            .unwrap();
        let p = Profile::decode(&raw[..]).unwrap();
        let s = |i: i64| p.string_table[i as usize].as_str();
        assert_eq!(p.string_table[0], "");
        let types: Vec<_> = p
            .sample_type
            .iter()
            .map(|t| (s(t.r#type), s(t.unit)))
            .collect();
        assert_eq!(types, SAMPLE_TYPES);
        assert_eq!(s(p.default_sample_type), "inuse_space");
        assert_eq!(p.sample[0].value, [1200, 67_200, 100]);
        assert_eq!(p.sample[1].value, [10, 40_960, 0]);
        let names = |sample: &Sample| -> Vec<String> {
            sample
                .location_id
                .iter()
                .map(|&id| {
                    let loc = &p.location[id as usize - 1];
                    assert_eq!(loc.id, id);
                    let f = &p.function[loc.line[0].function_id as usize - 1];
                    format!("{}:{}", s(f.name), loc.line[0].line)
                })
                .collect()
        };
        assert_eq!(
            names(&p.sample[0]),
            ["PacedLeak:0", "serve:44", "<module>:60"]
        );
        assert_eq!(
            names(&p.sample[1]),
            ["native heap:0", "leak_buffer:24", "serve:36", "<module>:60"]
        );
        // one function per (name, file), one location per line: serve twice, <module> once
        assert_eq!(p.function.len(), 5);
        assert_eq!(p.location.len(), 6);
        // the native frame's library is its mapping
        let native_loc = &p.location[p.sample[1].location_id[1] as usize - 1];
        assert_eq!(
            s(p.mapping[native_loc.mapping_id as usize - 1].filename),
            "/app/ext.so"
        );
        let labels: Vec<_> = p.sample[0]
            .label
            .iter()
            .map(|l| (s(l.key), s(l.str)))
            .collect();
        assert_eq!(
            labels,
            [
                ("type", "PacedLeak"),
                ("growing", "yes"),
                ("finding", "PacedLeak at leak.py:44")
            ]
        );
        assert_eq!(p.duration_nanos, 20_000_000_000);
    }
}
