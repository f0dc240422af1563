//! The live set and per-type growth, computed from births and frees. Pure: no I/O, no
//! clock, no knowledge of where events come from. `trace` feeds it from the ring buffer;
//! the tests feed it by hand.
//!
//! Matching rules (why deaths can come from three places):
//! - a free of the object's own address (`tp_free(op)`, `PyObject_GC_Del(op)`) kills it;
//! - a free of its *block* (the allocator sees `op - preheader`) kills it;
//! - a birth at an address that is still live means the old object died unseen (freelist
//!   reuse, a resize in place, a death through an inlined path): the old one is retired.
//!   Births into a new object's pre-header area retire whatever "lived" there too.
//!
//! Objects that die on a freelist stay "live" until the slot is reused: freelists are
//! bounded, so that never looks like growth.
use hashbrown::HashMap;
use std::collections::VecDeque;

#[derive(Clone, Copy, Debug)]
struct LiveObject {
    type_ptr: u64,
    site: u32,
    /// The sampling window it was born in (`Aggregator::set_epoch`; 0 when exact).
    epoch: u32,
    /// The interval it was born in (0 = the first after attach): how old it is.
    interval: u32,
    /// Its own bytes and, within them, what it owns beside itself: buffers the interpreter
    /// allocated for it (`set_owned`), and native blocks it holds (`adopt`).
    bytes: u64,
    owned: u64,
    adopted: u64,
    /// For a native block: the live object that holds it (0: none), whose bytes count it
    /// while it does; its own site's counters do not.
    owner: u64,
    preheader: u64,
    /// What the sampled mode remembers of the object to tell it from a successor at the
    /// same address (`Followed::tag`; 0 = nothing yet).
    tag: u64,
}

/// A live object as the sampled mode follows it between windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Followed {
    pub addr: u64,
    pub type_ptr: u64,
    pub site: u32,
    pub epoch: u32,
    pub bytes: u64,
    pub preheader: u64,
    pub tag: u64,
}

/// Counters of one type, or of one (type, allocation site).
#[derive(Clone, Debug, Default)]
struct Counters {
    live: u64,
    live_bytes: u64,
    births: u64,
    deaths: u64,
    interval_births: u64,
    interval_deaths: u64,
    /// Lowest live count seen in the current interval.
    floor: u64,
    /// Live count at each snapshot (index 0 = attach, always 0): gives the rate.
    lives: Vec<u64>,
    /// Lowest live count in each interval (index 0 = attach, always 0): decides growth.
    floors: Vec<u64>,
    /// Live objects born in each of the last `AGE_INTERVALS` intervals (front: the current
    /// one), and those born before: the *aged* survivors.
    young: VecDeque<u64>,
    aged: u64,
    /// Deaths of aged objects so far.
    aged_deaths: u64,
    /// Aged survivors, and aged deaths so far, at each snapshot (index 0 = attach).
    ageds: Vec<u64>,
    aged_deaths_at: Vec<u64>,
    /// Deaths inside a collection of the cyclic GC (`Aggregator::free_in_gc`).
    collected: u64,
}

impl Counters {
    fn new(snapshots: usize) -> Self {
        Counters {
            lives: vec![0; snapshots],
            floors: vec![0; snapshots],
            young: VecDeque::from(vec![0; AGE_INTERVALS]),
            ageds: vec![0; snapshots],
            aged_deaths_at: vec![0; snapshots],
            ..Default::default()
        }
    }

    fn born(&mut self, bytes: u64) {
        self.young[0] += 1;
        self.live += 1;
        self.live_bytes += bytes;
        self.births += 1;
        self.interval_births += 1;
    }

    /// A live object `age` intervals old is now counted with its owner (`adopt`): it leaves
    /// these counters without dying...
    fn leave(&mut self, bytes: u64, age: u32) {
        match self.young.get_mut(age as usize) {
            Some(n) => *n -= 1,
            None => self.aged -= 1,
        }
        self.live -= 1;
        self.floor = self.floor.min(self.live);
        self.live_bytes -= bytes;
    }

    /// A held object (counted with its owner) died: a death here, its live count already
    /// left.
    fn gone(&mut self, age: u32) {
        if age as usize >= self.young.len() {
            self.aged_deaths += 1;
        }
        self.deaths += 1;
        self.interval_deaths += 1;
    }

    /// ...and comes back, as old as it is, when its owner dies before it.
    fn rejoin(&mut self, bytes: u64, age: u32) {
        match self.young.get_mut(age as usize) {
            Some(n) => *n += 1,
            None => self.aged += 1,
        }
        self.live += 1;
        self.live_bytes += bytes;
    }

    /// An object born `age` intervals ago (0: in the current one) died, in a collection of
    /// the cyclic GC if `in_gc`.
    fn died(&mut self, bytes: u64, age: u32, in_gc: bool) {
        self.collected += in_gc as u64;
        match self.young.get_mut(age as usize) {
            Some(n) => *n -= 1,
            None => {
                self.aged -= 1;
                self.aged_deaths += 1;
            }
        }
        self.live -= 1;
        self.floor = self.floor.min(self.live);
        self.live_bytes -= bytes;
        self.deaths += 1;
        self.interval_deaths += 1;
    }

    /// Merges the history's neighbouring snapshots two into one (see `MAX_SNAPSHOTS`).
    fn halve(&mut self) {
        halve(&mut self.lives, |_, b| b);
        halve(&mut self.floors, u64::min);
        halve(&mut self.ageds, |_, b| b);
        halve(&mut self.aged_deaths_at, |_, b| b);
    }

    /// Closes the interval: records live count and floor, returns the row, resets.
    fn close(&mut self, type_ptr: u64, site: u32, name: String, times: &[f64]) -> TypeRow {
        self.lives.push(self.live);
        self.floors.push(self.floor);
        self.floor = self.live;
        self.ageds.push(self.aged);
        self.aged_deaths_at.push(self.aged_deaths);
        // The oldest young interval comes of age.
        self.aged += self.young.pop_back().unwrap_or(0);
        self.young.push_front(0);
        let row = TypeRow {
            type_ptr,
            site,
            name,
            live: self.live,
            live_bytes: self.live_bytes,
            births: self.births,
            deaths: self.deaths,
            interval_births: self.interval_births,
            interval_deaths: self.interval_deaths,
            rate_per_s: slope(times, &self.lives),
            growing: keeps_growing(&self.floors, self.births)
                || ages_growing(&self.ageds, &self.aged_deaths_at),
            aged: *self.ageds.last().unwrap_or(&0),
            collected: self.collected,
            census: false,
            estimate: None,
            free_count_flat: false,
        };
        self.interval_births = 0;
        self.interval_deaths = 0;
        row
    }
}

/// What a birth event tells, once user space has looked at the type and the stack.
#[derive(Clone, Copy, Debug)]
pub struct Birth {
    pub type_ptr: u64,
    pub bytes: u64,
    pub preheader: u64,
    /// Allocation site (`stacks::Sites` id; 0 = no stack).
    pub site: u32,
}

#[derive(Default)]
pub struct Aggregator {
    objects: HashMap<u64, LiveObject>,
    types: HashMap<u64, Counters>,
    sites: HashMap<(u64, u32), Counters>,
    /// Snapshot times in seconds since attach; `times[0] == 0.0`.
    times: Vec<f64>,
    /// Births of types this build does not fully see (not counted anywhere else).
    pub ignored_births: u64,
    /// Window number given to new objects.
    epoch: u32,
    /// Followed objects found dead by reading their memory (sampled mode).
    pub found_dead: u64,
    /// Intervals closed so far (the history in `times` may be merged; this is not).
    closed: u32,
    /// The blocks each owner holds (`adopt`).
    holdings: HashMap<u64, Vec<u64>>,
}

/// One row of a report: a type's (or a type's at one site) state at a snapshot.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TypeRow {
    #[serde(skip)]
    pub type_ptr: u64,
    /// The allocation site, in site rows (0 in type rows).
    #[serde(skip)]
    pub site: u32,
    pub name: String,
    pub live: u64,
    pub live_bytes: u64,
    pub births: u64,
    pub deaths: u64,
    pub interval_births: u64,
    pub interval_deaths: u64,
    /// Least-squares slope of the live count over all snapshots, objects per second.
    pub rate_per_s: f64,
    pub growing: bool,
    /// Live objects born at least `AGE_INTERVALS` whole intervals before this snapshot
    /// (followed windows in sampled mode): churn has none, a leak piles them up.
    pub aged: u64,
    /// Deaths inside a collection of the cyclic GC: garbage only the collector frees.
    pub collected: u64,
    /// A row from the census (all live objects of a type the probes cannot see on this
    /// build), not from births and deaths: `births`/`deaths` are unknown (0).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub census: bool,
    /// Sampled mode: the counts scaled to the whole trace (set by the session).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimate: Option<crate::model::budget::Estimate>,
    /// Sampled mode: the followed survivors grew, but the free signals (GC lists,
    /// pymalloc's pools) counted the type flat, so it is not called growing.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub free_count_flat: bool,
}

/// A type "keeps growing" when its *floor* (the lowest live count within an interval) keeps
/// rising: garbage that waits for the collector, temporaries and freelists make live counts
/// saw up and down, but only a leak lifts the floor. Over at least this many intervals...
pub const MIN_INTERVALS: usize = 4;
/// ...its floor set a new high in at least 3 of every 4 intervals, and...
pub const HIGHS_NUM: usize = 3;
pub const HIGHS_DEN: usize = 4;
/// ...it gained at least this many objects and at least 1/200 of its births.
pub const MIN_NET_GROWTH: u64 = 10;
pub const MIN_SURVIVING_PER_MILLE: u64 = 5;

/// The second way to grow: by *aged survivors*, objects still alive `AGE_INTERVALS` whole
/// intervals after the one they were born in. Churn never has any; a leak piles them up even
/// when it is a tiny share of a hot line's births (the survival share above hides it) or
/// comes in bursts (its floor stalls between them); a cache that has filled keeps their
/// count flat (its aged entries die as fast as new ones age). A site grows this way when,
/// after `MIN_INTERVALS + AGE_INTERVALS` intervals, its aged survivors rose by at least
/// `MIN_NET_GROWTH` over the recent half of the snapshots while at most a tenth as many aged
/// objects died there: aged survivors of a leak stay alive.
pub const AGE_INTERVALS: usize = 2;
pub const AGED_DEATHS_PER_GAIN_DEN: u64 = 10;

impl Aggregator {
    pub fn new() -> Self {
        Aggregator {
            times: vec![0.0],
            ..Default::default()
        }
    }

    pub fn live_objects(&self) -> usize {
        self.objects.len()
    }

    /// The interval births fall in now (0 = the first after attach).
    fn interval(&self) -> u32 {
        self.closed
    }

    fn retire(&mut self, addr: u64) -> bool {
        self.retire_as(addr, false)
    }

    fn retire_as(&mut self, addr: u64, in_gc: bool) -> bool {
        let now = self.interval();
        match self.objects.remove(&addr) {
            Some(o) if o.owner != 0 => {
                // A held block: it left its own counters' live count when it was adopted;
                // its death still counts there (live = births − deaths − held).
                let age = now.saturating_sub(o.interval);
                for c in [
                    self.types.get_mut(&o.type_ptr),
                    self.sites.get_mut(&(o.type_ptr, o.site)),
                ]
                .into_iter()
                .flatten()
                {
                    c.gone(age);
                }
                self.disown(o.owner, addr, o.bytes);
                true
            }
            Some(o) => {
                let age = now.saturating_sub(o.interval);
                self.types
                    .get_mut(&o.type_ptr)
                    .expect("live object of unknown type")
                    .died(o.bytes, age, in_gc);
                self.sites
                    .get_mut(&(o.type_ptr, o.site))
                    .expect("live object of unknown site")
                    .died(o.bytes, age, in_gc);
                // Blocks it held and did not free are on their own again (a deallocator
                // that forgets its native state: that state is the leak).
                for b in self.holdings.remove(&addr).unwrap_or_default() {
                    let Some(block) = self.objects.get_mut(&b) else {
                        continue;
                    };
                    block.owner = 0;
                    let (t, s, bytes) = (block.type_ptr, block.site, block.bytes);
                    let age = now.saturating_sub(block.interval);
                    for c in [self.types.get_mut(&t), self.sites.get_mut(&(t, s))]
                        .into_iter()
                        .flatten()
                    {
                        c.rejoin(bytes, age);
                    }
                }
                true
            }
            None => false,
        }
    }

    /// The live object at `owner` holds the live block at `block` (a native allocation whose
    /// address it keeps: an ndarray's data, an extension object's state): from now until
    /// either dies, the block's bytes are the owner's, at the owner's type and site, and
    /// its own site does not count it. False (and nothing changes) when either is not live,
    /// the block is held already, or the owner is itself a held block.
    pub fn adopt(&mut self, owner: u64, block: u64) -> bool {
        if owner == block
            || self.objects.get(&owner).is_none_or(|o| o.owner != 0)
            || self.objects.get(&block).is_none_or(|b| b.owner != 0)
            || self.holdings.contains_key(&block)
        {
            return false;
        }
        let now = self.interval();
        let b = self.objects.get_mut(&block).expect("checked");
        b.owner = owner;
        let (t, s, bytes, age) = (b.type_ptr, b.site, b.bytes, now.saturating_sub(b.interval));
        for c in [self.types.get_mut(&t), self.sites.get_mut(&(t, s))]
            .into_iter()
            .flatten()
        {
            c.leave(bytes, age);
        }
        let o = self.objects.get_mut(&owner).expect("checked");
        o.bytes += bytes;
        o.adopted += bytes;
        let (t, s) = (o.type_ptr, o.site);
        for c in [self.types.get_mut(&t), self.sites.get_mut(&(t, s))]
            .into_iter()
            .flatten()
        {
            c.live_bytes += bytes;
        }
        self.holdings.entry(owner).or_default().push(block);
        true
    }

    /// Native blocks held by live objects now, and their bytes.
    pub fn held(&self) -> (u64, u64) {
        self.holdings
            .values()
            .flatten()
            .filter_map(|b| self.objects.get(b))
            .fold((0, 0), |(n, bytes), b| (n + 1, bytes + b.bytes))
    }

    /// Whether the live object at `addr` is held by another (`adopt`).
    pub fn is_held(&self, addr: u64) -> bool {
        self.objects.get(&addr).is_some_and(|o| o.owner != 0)
    }

    /// The held block at `block` (`bytes`) died: its owner no longer counts it.
    fn disown(&mut self, owner: u64, block: u64, bytes: u64) {
        if let Some(v) = self.holdings.get_mut(&owner) {
            v.retain(|&b| b != block);
            if v.is_empty() {
                self.holdings.remove(&owner);
            }
        }
        let Some(o) = self.objects.get_mut(&owner) else {
            return;
        };
        o.bytes -= bytes;
        o.adopted -= bytes;
        let (t, s) = (o.type_ptr, o.site);
        for c in [self.types.get_mut(&t), self.sites.get_mut(&(t, s))]
            .into_iter()
            .flatten()
        {
            c.live_bytes -= bytes;
        }
    }

    /// An object came to life at `addr`; `None` for a type whose instances this build
    /// cannot fully see (its birth still proves the previous occupant of `addr` dead).
    pub fn birth(&mut self, addr: u64, birth: Option<Birth>) {
        self.retire(addr);
        // An object a little above whose pre-header covers `addr` is gone too (its block
        // now holds this one).
        for k in crate::cpython::PREHEADER_SIZES {
            if self
                .objects
                .get(&(addr + k))
                .is_some_and(|o| o.preheader >= k)
            {
                self.retire(addr + k);
            }
        }
        let Some(b) = birth else {
            self.ignored_births += 1;
            return;
        };
        let mut k = crate::cpython::PREHEADER_STEP;
        while k <= b.preheader {
            self.retire(addr - k);
            k += crate::cpython::PREHEADER_STEP;
        }
        let snapshots = self.times.len();
        self.types
            .entry(b.type_ptr)
            .or_insert_with(|| Counters::new(snapshots))
            .born(b.bytes);
        self.sites
            .entry((b.type_ptr, b.site))
            .or_insert_with(|| Counters::new(snapshots))
            .born(b.bytes);
        self.objects.insert(
            addr,
            LiveObject {
                type_ptr: b.type_ptr,
                site: b.site,
                epoch: self.epoch,
                interval: self.interval(),
                bytes: b.bytes,
                owned: 0,
                adopted: 0,
                owner: 0,
                preheader: b.preheader,
                tag: 0,
            },
        );
    }

    /// Live objects of these types (to read what they own).
    pub fn live_of(&self, types: &[u64]) -> Vec<u64> {
        self.objects
            .iter()
            .filter(|(_, o)| types.contains(&o.type_ptr))
            .map(|(&a, _)| a)
            .collect()
    }

    /// The object at `addr` now owns `owned` bytes beside itself (a bytearray's buffer):
    /// its bytes, and its type's and site's, count them from now until it dies.
    pub fn set_owned(&mut self, addr: u64, owned: u64) {
        let Some(o) = self.objects.get_mut(&addr) else {
            return;
        };
        let (old, new) = (o.bytes, o.bytes - o.owned + owned);
        o.bytes = new;
        o.owned = owned;
        for c in [
            self.types.get_mut(&o.type_ptr),
            self.sites.get_mut(&(o.type_ptr, o.site)),
        ]
        .into_iter()
        .flatten()
        {
            c.live_bytes = c.live_bytes - old + new;
        }
    }

    /// Births from now on belong to window `epoch`.
    pub fn set_epoch(&mut self, epoch: u32) {
        self.epoch = epoch;
    }

    /// Every live object, for the sampled mode to check between windows.
    pub fn followed(&self) -> Vec<Followed> {
        self.objects
            .iter()
            .map(|(&addr, o)| Followed {
                addr,
                type_ptr: o.type_ptr,
                site: o.site,
                epoch: o.epoch,
                // its own bytes: what it owns beside itself is elsewhere
                bytes: o.bytes - o.owned - o.adopted,
                preheader: o.preheader,
                tag: o.tag,
            })
            .collect()
    }

    /// Up to `k` live objects of each site in `keys`, oldest first (an aged survivor says
    /// more about a leak than one born a moment ago), for retention chains.
    pub fn samples(&self, keys: &[(u64, u32)], k: usize) -> HashMap<(u64, u32), Vec<u64>> {
        let mut picked: HashMap<(u64, u32), Vec<(u32, u64)>> =
            keys.iter().map(|&key| (key, vec![])).collect();
        for (&addr, o) in self.objects.iter().filter(|(_, o)| o.owner == 0) {
            if let Some(v) = picked.get_mut(&(o.type_ptr, o.site)) {
                v.push((o.interval, addr));
            }
        }
        picked
            .into_iter()
            .map(|(key, mut v)| {
                v.sort_unstable();
                (key, v.into_iter().take(k).map(|(_, a)| a).collect())
            })
            .collect()
    }

    /// Every tracked live object and its type.
    pub fn live(&self) -> Vec<(u64, u64)> {
        self.objects.iter().map(|(&a, o)| (a, o.type_ptr)).collect()
    }

    /// The site of the live object at `addr`, if one is tracked there.
    pub fn site_of(&self, addr: u64) -> Option<(u64, u32)> {
        self.objects.get(&addr).map(|o| (o.type_ptr, o.site))
    }

    /// Remembers what was read of the live object at `addr` (ignored if it is gone).
    pub fn set_tag(&mut self, addr: u64, tag: u64) {
        if let Some(o) = self.objects.get_mut(&addr) {
            o.tag = tag;
        }
    }

    /// The object at `addr` was found dead without a free being seen (its memory says
    /// so): a death like any other.
    pub fn found_dead(&mut self, addr: u64) {
        if self.retire(addr) {
            self.found_dead += 1;
        }
    }

    /// Live objects born in window `epoch`, per (type, site).
    pub fn born_in(&self, epoch: u32) -> HashMap<(u64, u32), u64> {
        let mut n = HashMap::new();
        for o in self
            .objects
            .values()
            .filter(|o| o.epoch == epoch && o.owner == 0)
        {
            *n.entry((o.type_ptr, o.site)).or_insert(0) += 1;
        }
        n
    }

    /// The memory at `addr` was released: the object at `addr`, or the one whose block
    /// starts at `addr`, is dead. Frees of anything else (buffers, objects born before
    /// attach) change nothing.
    pub fn free(&mut self, addr: u64) {
        self.free_as(addr, false);
    }

    /// `free`, inside a collection of the cyclic GC: the object was garbage only the
    /// collector could reclaim (counted in its rows' `collected`).
    pub fn free_in_gc(&mut self, addr: u64) {
        self.free_as(addr, true);
    }

    fn free_as(&mut self, addr: u64, in_gc: bool) {
        if self.retire_as(addr, in_gc) {
            return;
        }
        for k in crate::cpython::PREHEADER_SIZES {
            if self
                .objects
                .get(&(addr + k))
                .is_some_and(|o| o.preheader == k)
            {
                self.retire_as(addr + k, in_gc);
                return;
            }
        }
    }

    /// Closes an interval at `elapsed` seconds since attach and returns every type's row
    /// and every (type, site)'s row, each sorted: growing first, then by rate, live bytes,
    /// name (and site id).
    pub fn snapshot(
        &mut self,
        elapsed: f64,
        name_of: &mut dyn FnMut(u64) -> String,
    ) -> (Vec<TypeRow>, Vec<TypeRow>) {
        self.times.push(elapsed);
        let mut names: HashMap<u64, String> = HashMap::new();
        let mut name = |t: u64| names.entry(t).or_insert_with(|| name_of(t)).clone();
        let times = &self.times;
        let mut types: Vec<TypeRow> = self
            .types
            .iter_mut()
            .map(|(&t, c)| c.close(t, 0, name(t), times))
            .collect();
        let mut sites: Vec<TypeRow> = self
            .sites
            .iter_mut()
            .map(|(&(t, site), c)| c.close(t, site, name(t), times))
            .collect();
        self.closed += 1;
        if self.times.len() > MAX_SNAPSHOTS {
            halve(&mut self.times, |_, b| b);
            for c in self.types.values_mut().chain(self.sites.values_mut()) {
                c.halve();
            }
        }
        types.sort_by(order);
        sites.sort_by(order);
        (types, sites)
    }
}

/// Rows for types only the census sees, from their counts at each census (`trace` on
/// partial builds). Counts are of all live objects; growth uses the same rule.
#[derive(Default)]
pub struct CensusTrend {
    times: Vec<f64>,
    history: HashMap<u64, (Vec<u64>, u64)>,
}

impl CensusTrend {
    pub fn add(
        &mut self,
        elapsed: f64,
        counts: &HashMap<u64, (u64, u64)>,
        name_of: &mut dyn FnMut(u64) -> String,
    ) -> Vec<TypeRow> {
        let n = self.times.len();
        self.times.push(elapsed);
        for &t in counts.keys() {
            self.history.entry(t).or_insert_with(|| (vec![0; n], 0));
        }
        let mut rows = vec![];
        for (&t, (h, bytes)) in self.history.iter_mut() {
            let (objects, b) = counts.get(&t).copied().unwrap_or((0, 0));
            h.push(objects);
            *bytes = b;
            // The first census is the baseline: growth is judged from there on; types whose
            // count never moved are static (functions, descriptors…) and left out.
            let since_first = &h[n.min(h.iter().position(|&x| x > 0).unwrap_or(n))..];
            if since_first.iter().all(|&x| x == since_first[0]) {
                continue;
            }
            rows.push(TypeRow {
                type_ptr: t,
                site: 0,
                name: name_of(t),
                live: objects,
                live_bytes: b,
                births: 0,
                deaths: 0,
                interval_births: 0,
                interval_deaths: 0,
                rate_per_s: slope(
                    &self.times[self.times.len() - since_first.len()..],
                    since_first,
                ),
                growing: keeps_growing(since_first, 0),
                aged: 0,
                collected: 0,
                census: true,
                estimate: None,
                free_count_flat: false,
            });
        }
        rows
    }
}

/// Sorts a merged table (probe rows and census rows) the same way as `snapshot`.
pub fn sort_rows(rows: &mut [TypeRow]) {
    rows.sort_by(order);
}

fn order(a: &TypeRow, b: &TypeRow) -> std::cmp::Ordering {
    b.growing
        .cmp(&a.growing)
        .then(b.rate_per_s.total_cmp(&a.rate_per_s))
        .then(b.live_bytes.cmp(&a.live_bytes))
        .then(a.name.cmp(&b.name))
        .then(a.site.cmp(&b.site))
}

/// The aged-survivor rule (see `AGE_INTERVALS`): `aged[i]` live aged objects and
/// `aged_deaths[i]` aged deaths so far at snapshot `i` (index 0 = attach).
pub fn ages_growing(aged: &[u64], aged_deaths: &[u64]) -> bool {
    let n = aged.len().min(aged_deaths.len());
    if n < 1 + MIN_INTERVALS + AGE_INTERVALS {
        return false;
    }
    let (mid, last) = (n / 2, n - 1);
    let gain = aged[last].saturating_sub(aged[mid]);
    let died = aged_deaths[last].saturating_sub(aged_deaths[mid]);
    gain >= MIN_NET_GROWTH && died * AGED_DEATHS_PER_GAIN_DEN <= gain
}

/// The growth rule (see the constants above), over the per-interval floors: a new high in
/// most intervals, and a net gain that is neither tiny nor a negligible share of births.
pub fn keeps_growing(floors: &[u64], births: u64) -> bool {
    let intervals = floors.len().saturating_sub(1);
    if intervals < MIN_INTERVALS {
        return false;
    }
    let mut high = floors[0];
    let mut highs = 0;
    for &floor in &floors[1..] {
        if floor > high {
            highs += 1;
            high = floor;
        }
    }
    let net = floors[intervals].saturating_sub(floors[0]);
    highs * HIGHS_DEN >= intervals * HIGHS_NUM
        && net >= MIN_NET_GROWTH
        && net * 1000 >= births * MIN_SURVIVING_PER_MILLE
}

/// Most snapshots of history a row keeps. Past it, neighbouring snapshots are merged two
/// into one: a floor becomes the lower of the two, every other series keeps the later value.
/// So a day-long trace holds about as much per row as a short one, and its rules judge the
/// same shape at a coarser grain (at `--interval 5`, after 85 minutes).
pub const MAX_SNAPSHOTS: usize = 1024;

/// Merges `v[1..]` pairwise with `merge` (an odd last element stays); `v[0]`, the attach,
/// stays.
fn halve<T: Copy>(v: &mut Vec<T>, merge: impl Fn(T, T) -> T) {
    let Some(&first) = v.first() else {
        return;
    };
    let mut out = Vec::with_capacity(v.len() / 2 + 1);
    out.push(first);
    for pair in v[1..].chunks(2) {
        out.push(match pair {
            [a, b] => merge(*a, *b),
            [a] => *a,
            _ => unreachable!(),
        });
    }
    *v = out;
}

/// Least-squares slope of `ys` over `xs` (objects per second).
pub fn slope(xs: &[f64], ys: &[u64]) -> f64 {
    let n = xs.len().min(ys.len());
    if n < 2 {
        return 0.0;
    }
    let mx = xs[..n].iter().sum::<f64>() / n as f64;
    let my = ys[..n].iter().map(|&y| y as f64).sum::<f64>() / n as f64;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for i in 0..n {
        sxy += (xs[i] - mx) * (ys[i] as f64 - my);
        sxx += (xs[i] - mx) * (xs[i] - mx);
    }
    if sxx == 0.0 { 0.0 } else { sxy / sxx }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEAK: u64 = 0x1000;
    const TMP: u64 = 0x2000;

    fn b(type_ptr: u64, preheader: u64) -> Option<Birth> {
        Some(Birth {
            type_ptr,
            bytes: 48 + preheader,
            preheader,
            site: 1,
        })
    }

    fn names(t: u64) -> String {
        match t {
            LEAK => "Leak".into(),
            TMP => "tmp".into(),
            _ => format!("{t:#x}"),
        }
    }

    fn row<'a>(rows: &'a [TypeRow], name: &str) -> &'a TypeRow {
        rows.iter().find(|r| r.name == name).unwrap()
    }

    #[test]
    fn test_objects_that_survive_every_interval_are_growing_at_their_rate() {
        // GIVEN 100 Leak objects born per second, none freed, for 5 one-second intervals
        let mut agg = Aggregator::new();
        let mut addr = 0x10_0000;
        let mut rows = vec![];
        for s in 1..=5 {
            for _ in 0..100 {
                agg.birth(addr, b(LEAK, 16));
                addr += 64;
            }
            rows = agg.snapshot(s as f64, &mut names).0;
        }
        // THEN the type is on top, growing, at 100/s, with exact counts and bytes
        let r = &rows[0];
        assert_eq!((r.name.as_str(), r.live, r.growing), ("Leak", 500, true));
        assert_eq!(r.live_bytes, 500 * 64);
        assert!((r.rate_per_s - 100.0).abs() < 1e-9, "{}", r.rate_per_s);
        assert_eq!((r.interval_births, r.interval_deaths), (100, 0));
    }

    #[test]
    fn test_garbage_emptied_by_the_collector_is_not_growing() {
        // GIVEN cycles that pile up and are freed in bulk twice per interval, and sampled at
        // snapshots that happen to catch ever larger piles
        let mut agg = Aggregator::new();
        let mut addr = 0x100_0000u64;
        for s in 1..=6u64 {
            for _ in 0..2 {
                let pile: Vec<u64> = (0..100)
                    .map(|_| {
                        addr += 64;
                        addr
                    })
                    .collect();
                for &a in &pile {
                    agg.birth(a, b(TMP, 16));
                }
                for &a in &pile {
                    agg.free(a - 16);
                }
            }
            for _ in 0..s * 20 {
                addr += 64;
                agg.birth(addr, b(TMP, 16));
            }
            let rows = agg.snapshot(s as f64, &mut names).0;
            // THEN the live count rises at every snapshot, but the floor does not
            assert!(!row(&rows, "tmp").growing, "snapshot {s}");
            for a in (addr - s * 20 * 64 + 64..=addr).step_by(64) {
                agg.free(a - 16);
            }
        }
    }

    #[test]
    fn test_churn_freed_by_block_address_is_not_growing() {
        // GIVEN GC objects (pre-header 16) freed by their block address, as pymalloc sees it
        let mut agg = Aggregator::new();
        for s in 1..=6 {
            for i in 0..1000u64 {
                let op = 0x50_0000 + (i % 7) * 64 + 16;
                agg.birth(op, b(TMP, 16));
                agg.free(op - 16);
            }
            let rows = agg.snapshot(s as f64, &mut names).0;
            // THEN nothing is live and nothing grows
            assert_eq!(row(&rows, "tmp").live, 0);
            assert!(!row(&rows, "tmp").growing);
        }
        assert_eq!(agg.live_objects(), 0);
    }

    #[test]
    fn test_free_of_the_object_pointer_kills_it() {
        let mut agg = Aggregator::new();
        agg.birth(0x100, b(TMP, 32));
        agg.free(0x100);
        assert_eq!(agg.live_objects(), 0);
    }

    #[test]
    fn test_free_of_a_neighbouring_block_does_not_kill() {
        // GIVEN a non-GC object at 0x110 and a 16-byte buffer block at 0x100 next to it
        let mut agg = Aggregator::new();
        agg.birth(0x110, b(TMP, 0));
        // WHEN the buffer is freed THEN the object is still live (its pre-header is 0)
        agg.free(0x100);
        assert_eq!(agg.live_objects(), 1);
    }

    #[test]
    fn test_freelist_reuse_retires_the_previous_occupant() {
        // GIVEN objects that die onto a freelist (no free event) and are reborn in place
        let mut agg = Aggregator::new();
        for s in 1..=5 {
            for i in 0..80u64 {
                agg.birth(0x9000 + i * 32, b(TMP, 0));
            }
            let rows = agg.snapshot(s as f64, &mut names).0;
            // THEN the live count is bounded by the freelist, and not growing
            assert_eq!(row(&rows, "tmp").live, 80);
            assert!(!row(&rows, "tmp").growing);
        }
    }

    #[test]
    fn test_birth_over_a_stale_preheader_retires_it() {
        let mut agg = Aggregator::new();
        agg.birth(0x100, b(TMP, 0)); // its free was missed
        agg.birth(0x120, b(LEAK, 32)); // a new GC object whose block starts at 0x100
        let rows = agg.snapshot(1.0, &mut names).0;
        assert_eq!(row(&rows, "tmp").live, 0);
        assert_eq!(row(&rows, "Leak").live, 1);
    }

    #[test]
    fn test_untracked_birth_counts_as_ignored_and_retires_the_occupant() {
        let mut agg = Aggregator::new();
        agg.birth(0x100, b(LEAK, 0));
        agg.birth(0x100, None);
        assert_eq!((agg.live_objects(), agg.ignored_births), (0, 1));
    }

    #[test]
    fn test_frees_of_unknown_addresses_change_nothing() {
        let mut agg = Aggregator::new();
        agg.free(0xdead0);
        agg.birth(0x100, b(TMP, 0));
        agg.free(0x200);
        assert_eq!(agg.live_objects(), 1);
    }

    #[test]
    fn test_sites_of_one_type_are_counted_apart() {
        // GIVEN one type born at two sites: site 1 leaks, site 2 churns
        let mut agg = Aggregator::new();
        let mut addr = 0x10_0000;
        let mut sites = vec![];
        for s in 1..=5 {
            for _ in 0..100 {
                agg.birth(
                    addr,
                    Some(Birth {
                        type_ptr: LEAK,
                        bytes: 64,
                        preheader: 0,
                        site: 1,
                    }),
                );
                addr += 64;
                agg.birth(
                    0x90_0000,
                    Some(Birth {
                        type_ptr: LEAK,
                        bytes: 64,
                        preheader: 0,
                        site: 2,
                    }),
                );
                agg.free(0x90_0000);
            }
            sites = agg.snapshot(s as f64, &mut names).1;
        }
        // THEN the leaking site is on top and growing, the churning one is not
        assert_eq!(
            (sites[0].site, sites[0].live, sites[0].growing),
            (1, 500, true)
        );
        assert_eq!(
            (
                sites[1].site,
                sites[1].live,
                sites[1].births,
                sites[1].growing
            ),
            (2, 0, 500, false)
        );
        assert!((sites[0].rate_per_s - 100.0).abs() < 1e-9);
    }

    #[test]
    fn test_census_trend_keeps_moving_types_only() {
        let mut trend = CensusTrend::default();
        let mut rows = vec![];
        for i in 0..6u64 {
            let counts = HashMap::from_iter([(LEAK, (100 + 50 * i, 0)), (TMP, (40, 0))]);
            rows = trend.add(i as f64, &counts, &mut names);
        }
        assert_eq!(rows.len(), 1, "the static type is left out");
        assert_eq!(
            (
                rows[0].name.as_str(),
                rows[0].live,
                rows[0].growing,
                rows[0].census
            ),
            ("Leak", 350, true, true)
        );
        assert!((rows[0].rate_per_s - 50.0).abs() < 1e-9);
    }

    /// One interval of a hot line: `churn` objects born and freed at site 2, and `keep` born
    /// at site 1 that stay (addresses from `next`).
    fn hot_interval(agg: &mut Aggregator, next: &mut u64, churn: u64, keep: u64) {
        for i in 0..churn {
            let a = 0x70_0000 + (i % 13) * 64;
            agg.birth(
                a,
                Some(Birth {
                    type_ptr: TMP,
                    bytes: 64,
                    preheader: 0,
                    site: 2,
                }),
            );
            agg.free(a);
        }
        for _ in 0..keep {
            *next += 64;
            agg.birth(
                *next,
                Some(Birth {
                    type_ptr: TMP,
                    bytes: 64,
                    preheader: 0,
                    site: 2,
                }),
            );
        }
    }

    #[test]
    fn test_a_slow_leak_on_a_hot_line_grows_by_its_aged_survivors() {
        // GIVEN a line where 20,000 objects an interval are born and freed and 10 stay: 0.05%
        // of its births, under the survival share the floor rule asks for
        let mut agg = Aggregator::new();
        let mut next = 0x100_0000;
        let mut growing_at = None;
        for s in 1..=12 {
            hot_interval(&mut agg, &mut next, 20_000, 10);
            let types = agg.snapshot(s as f64, &mut names).0;
            let r = row(&types, "tmp");
            assert!(r.live * 1000 < r.births * MIN_SURVIVING_PER_MILLE);
            if r.growing && growing_at.is_none() {
                growing_at = Some(s);
            }
        }
        // THEN it is called growing once the aged survivors have had time to pile up, and the
        // row counts them
        let types = agg.snapshot(13.0, &mut names).0;
        let r = row(&types, "tmp");
        assert!(r.growing, "{r:?}");
        assert_eq!(r.aged, 110, "born in intervals 0..=10, of 0..=12");
        assert_eq!(
            growing_at,
            Some(MIN_INTERVALS + AGE_INTERVALS),
            "as soon as there is the history the rule asks for"
        );
    }

    #[test]
    fn test_a_bursty_leak_stays_growing_between_its_bursts() {
        // GIVEN a leak that leaks 200 objects an interval for two intervals, then rests two
        let mut agg = Aggregator::new();
        let mut next = 0x100_0000;
        for s in 1..=14u64 {
            let keep = if (s - 1) % 4 < 2 { 200 } else { 0 };
            hot_interval(&mut agg, &mut next, 1_000, keep);
            let types = agg.snapshot(s as f64, &mut names).0;
            let r = row(&types, "tmp");
            // THEN once there is history it is growing at every snapshot, quiet ones too
            if s >= 7 {
                assert!(r.growing, "snapshot {s}: {r:?}");
            }
        }
    }

    #[test]
    fn test_a_cache_that_filled_is_not_growing_by_its_aged_entries() {
        // GIVEN an LRU cache of 1,000 entries filled over two intervals, then evicting its
        // oldest 100 and inserting 100 new ones every interval, beside churn
        let mut agg = Aggregator::new();
        let mut cache: VecDeque<u64> = VecDeque::new();
        let mut next = 0x100_0000;
        for s in 1..=16 {
            hot_interval(&mut agg, &mut next, 1_000, 0);
            let add = if s <= 2 { 500 } else { 100 };
            for _ in 0..add {
                if cache.len() == 1000 {
                    agg.free(cache.pop_front().unwrap());
                }
                next += 64;
                agg.birth(
                    next,
                    Some(Birth {
                        type_ptr: LEAK,
                        bytes: 64,
                        preheader: 0,
                        site: 1,
                    }),
                );
                cache.push_back(next);
            }
            let types = agg.snapshot(s as f64, &mut names).0;
            // THEN from the end of the fill on, it is never called growing
            let r = row(&types, "Leak");
            if s > 2 {
                assert!(!r.growing, "snapshot {s}: {r:?}");
            }
            assert!(!row(&types, "tmp").growing);
        }
    }

    #[test]
    fn test_deaths_inside_a_collection_are_counted_as_collected() {
        let mut agg = Aggregator::new();
        for i in 0..10u64 {
            agg.birth(0x1000 + i * 64, b(TMP, 16));
        }
        for i in 0..6u64 {
            agg.free_in_gc(0x1000 + i * 64 - 16); // by block, as pymalloc sees it
        }
        agg.free(0x1000 + 6 * 64);
        let (types, sites) = agg.snapshot(1.0, &mut names);
        let (t, s) = (row(&types, "tmp"), &sites[0]);
        assert_eq!((t.live, t.deaths, t.collected), (3, 7, 6));
        assert_eq!((s.deaths, s.collected), (7, 6));
    }

    #[test]
    fn test_a_long_trace_keeps_a_bounded_history_and_its_verdicts() {
        // GIVEN 3,000 one-second intervals: a steady leak of 10 a second, and churn
        let mut agg = Aggregator::new();
        let mut next = 0x100_0000;
        let mut last = (vec![], vec![]);
        for s in 1..=3000u64 {
            hot_interval(&mut agg, &mut next, 20, 0);
            for _ in 0..10 {
                next += 64;
                agg.birth(next, b(LEAK, 0));
            }
            last = agg.snapshot(s as f64, &mut names);
            // THEN the history never passes its bound
            assert!(agg.times.len() <= MAX_SNAPSHOTS, "{}", agg.times.len());
        }
        // THEN the leak is still growing at its rate, with its aged survivors, and the churn
        // is not
        let leak = row(&last.0, "Leak");
        assert!(leak.growing, "{leak:?}");
        assert!((leak.rate_per_s - 10.0).abs() < 0.1, "{leak:?}");
        assert_eq!(leak.aged, 10 * (3000 - 2));
        assert!(!row(&last.0, "tmp").growing);
        let c = &agg.types[&LEAK];
        assert_eq!(c.lives.len(), agg.times.len());
        assert_eq!(c.floors.len(), agg.times.len());
        // ... and ages stay right across merges: an old object's death is an aged death
        agg.free(0x100_0000 + 64 * 21);
        assert_eq!(
            agg.types[&LEAK].aged_deaths + agg.types[&TMP].aged_deaths,
            1
        );
    }

    #[test]
    fn halving_keeps_the_attach_and_merges_pairs() {
        let mut v = vec![0u64, 5, 3, 7, 9, 4];
        halve(&mut v, u64::min);
        assert_eq!(v, [0, 3, 7, 4]);
        let mut v = vec![0.0f64, 1.0, 2.0, 3.0];
        halve(&mut v, |_, b| b);
        assert_eq!(v, [0.0, 2.0, 3.0]);
    }

    #[test]
    fn aged_rule_cases() {
        // (aged survivors, aged deaths so far, growing)
        let cases: &[(&[u64], &[u64], bool, &str)] = &[
            (&[0, 0, 0, 10, 20, 30, 40], &[0; 7], true, "steady"),
            (&[0, 0, 0, 10, 20, 30], &[0; 6], false, "too few intervals"),
            (
                &[0, 0, 0, 0, 0, 0, 0, 0],
                &[0; 8],
                false,
                "churn: none ever aged",
            ),
            (
                &[0, 0, 0, 800, 800, 800, 800, 800],
                &[0, 0, 0, 0, 100, 200, 300, 400],
                false,
                "a full cache: flat, its aged entries die",
            ),
            (
                &[0, 0, 0, 200, 400, 400, 400, 600, 800],
                &[0; 9],
                true,
                "bursts",
            ),
            (
                &[0, 0, 0, 100, 200, 300, 400, 500],
                &[0, 0, 0, 0, 100, 200, 300, 400],
                false,
                "as many aged die as age: turnover, not a leak",
            ),
            (
                &[0, 0, 0, 1, 2, 3, 4, 5, 6],
                &[0; 9],
                false,
                "too small to matter",
            ),
        ];
        for &(aged, deaths, want, name) in cases {
            assert_eq!(ages_growing(aged, deaths), want, "{name}");
        }
    }

    #[test]
    fn growth_rule_cases() {
        // (floors, births, growing): the names of the cases are the spec
        let cases: &[(&[u64], u64, bool, &str)] = &[
            (&[0, 10, 20, 30, 40], 40, true, "steady leak"),
            (&[0, 10, 20, 30], 30, false, "too few intervals"),
            (
                &[0, 50, 40, 55, 45, 52, 48],
                100_000,
                false,
                "plateau with noise",
            ),
            (
                &[0, 0, 0, 0, 0, 0],
                5_000,
                false,
                "sawtooth: the collector empties it every interval",
            ),
            (&[0, 2, 4, 6, 8], 8, false, "too small to matter"),
            (
                &[0, 100, 200, 300, 400],
                1_000_000,
                false,
                "0.04% of a huge churn survives",
            ),
            (
                &[0, 100, 200, 300, 400],
                10_000,
                true,
                "4% of births survive",
            ),
            (
                &[0, 0, 100, 200, 300, 400],
                400,
                true,
                "the first interval's floor is the attach",
            ),
            (&[0, 100, 100, 100, 300], 300, false, "mostly flat"),
        ];
        for &(h, births, want, name) in cases {
            assert_eq!(keeps_growing(h, births), want, "{name}");
        }
    }

    #[test]
    fn slope_of_a_line() {
        assert!((slope(&[0.0, 1.0, 2.0], &[5, 7, 9]) - 2.0).abs() < 1e-12);
        assert_eq!(slope(&[0.0], &[1]), 0.0);
    }

    #[test]
    fn held_blocks_count_with_their_owner_and_come_back_when_it_dies_first() {
        const ARRAY: u64 = 0x10;
        const HEAP: u64 = leakscope_common::NATIVE_HEAP;
        let row = |rows: &[TypeRow], t: u64| rows.iter().find(|r| r.type_ptr == t).cloned();
        let mut a = Aggregator::new();
        let block = |bytes| Birth {
            type_ptr: HEAP,
            bytes,
            preheader: 0,
            site: 7,
        };
        let array = Birth {
            type_ptr: ARRAY,
            bytes: 96,
            preheader: 0,
            site: 3,
        };
        // two arrays, each with its data block; a third block no one holds
        a.birth(0x5000, Some(block(1 << 20)));
        a.birth(0x1000, Some(array));
        a.birth(0x6000, Some(block(1 << 20)));
        a.birth(0x2000, Some(array));
        a.birth(0x7000, Some(block(4096)));
        assert!(a.adopt(0x1000, 0x5000));
        assert!(a.adopt(0x2000, 0x6000));
        assert!(!a.adopt(0x2000, 0x6000), "held already");
        assert!(!a.adopt(0x5000, 0x7000), "a held block owns nothing");
        assert!(!a.adopt(0x9999, 0x7000), "no such owner");
        assert!(a.is_held(0x5000) && !a.is_held(0x7000));
        let (types, sites) = a.snapshot(1.0, &mut |_| "t".into());
        let arr = row(&types, ARRAY).unwrap();
        assert_eq!((arr.live, arr.live_bytes), (2, 2 * (96 + (1 << 20))));
        let heap = row(&types, HEAP).unwrap();
        assert_eq!((heap.live, heap.live_bytes, heap.births), (1, 4096, 3));
        assert_eq!(row(&sites, HEAP).unwrap().live_bytes, 4096);
        // followed objects are checked by their own bytes
        let f = a.followed();
        assert_eq!(f.iter().find(|f| f.addr == 0x1000).unwrap().bytes, 96);
        // the first array frees its data, then dies
        a.free(0x5000);
        let (types, _) = a.snapshot(2.0, &mut |_| "t".into());
        assert_eq!(row(&types, ARRAY).unwrap().live_bytes, 2 * 96 + (1 << 20));
        assert_eq!(row(&types, HEAP).unwrap().live, 1);
        a.free(0x1000);
        // the second dies without freeing its block: the block is native again, as old as
        // it is, and its site counts it
        a.free(0x2000);
        assert!(!a.is_held(0x6000));
        let (types, sites) = a.snapshot(3.0, &mut |_| "t".into());
        assert_eq!(row(&types, ARRAY).unwrap().live_bytes, 0);
        let heap = row(&sites, HEAP).unwrap();
        assert_eq!((heap.live, heap.live_bytes), (2, (1 << 20) + 4096));
        // the held block that was freed counts as a death at its site
        assert_eq!((heap.births, heap.deaths), (3, 1));
    }

    #[test]
    fn owned_buffers_count_in_their_owners_bytes_until_they_die() {
        let mut a = Aggregator::new();
        let b = Birth {
            type_ptr: 0x10,
            bytes: 56,
            preheader: 0,
            site: 3,
        };
        a.birth(0x1000, Some(b));
        a.birth(0x2000, Some(b));
        a.set_owned(0x1000, 65_537);
        a.set_owned(0x9999, 1); // not tracked: nothing happens
        let (types, sites) = a.snapshot(1.0, &mut |_| "bytearray".into());
        assert_eq!(types[0].live_bytes, 2 * 56 + 65_537);
        assert_eq!(sites[0].live_bytes, 2 * 56 + 65_537);
        a.set_owned(0x1000, 100); // shrunk
        a.free(0x2000);
        let (types, _) = a.snapshot(2.0, &mut |_| "bytearray".into());
        assert_eq!(types[0].live_bytes, 56 + 100);
        a.free(0x1000);
        let (types, sites) = a.snapshot(3.0, &mut |_| "bytearray".into());
        assert_eq!((types[0].live_bytes, sites[0].live_bytes), (0, 0));
    }
}
