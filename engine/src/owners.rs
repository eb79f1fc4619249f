//! Who owns what crosses: the owner and group a sender lists with each entry, and what a
//! receiver makes of them, as `rsync -a` does.
//!
//! The sender's [`crate::manifest`] lists each entry's numeric owner and group
//! ([`sluice_proto::message::Owner`]); [`name_entries`] adds their names from the sender's user
//! database, or leaves out what [`Ownership`] says (`--no-owner`, `--no-group`,
//! `--numeric-ids`). At the receiver, [`Owners`] decides what an entry gets: only a process that
//! may give files away ([`may_give_away`]: root, or the capabilities `CAP_CHOWN`, `CAP_FOWNER`
//! and `CAP_FSETID`) gives any, looking each name up in its own user database and falling back
//! to the number for a name it does not know, as rsync does. Any other receiver leaves every
//! entry to its own user, silently, as rsync does.
//!
//! The invariant: an entry keeps its setuid bit only when it was given the source's owner, and
//! its setgid bit only when it was given the source's group ([`Given::mode_mask`]). A receiver
//! never leaves a setuid file that belongs to anyone but the owner the source named.
//!
//! This module is where the engine asks the C library about users and groups
//! (`getpwuid_r`, `getgrgid_r`, `getpwnam_r`, `getgrnam_r`, through the system's NSS, so users
//! from LDAP or sssd resolve as they do for `ls` and rsync), in [`lookup`], through the `nix`
//! crate: no `unsafe` here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sluice_proto::message::{Entry, Owner, MAX_OWNER_NAME};

/// Which of an entry's owner and group cross, and how (`--no-owner`, `--no-group`,
/// `--numeric-ids`). Both ends read it: a sender leaves out what is off, a receiver ignores
/// what is off even if a sender sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ownership {
    /// The owner crosses. Default on, as with `rsync -a`: a receiver that may give files away
    /// gives each the source's owner (`cp -a` as root does too).
    pub owner: bool,
    /// The group crosses. Default on, as the owner.
    pub group: bool,
    /// Ids cross as numbers: a sender sends no names and a receiver looks none up. Default
    /// off: a name means the same user on two hosts where the numbers often differ, so rsync
    /// maps by name unless told `--numeric-ids`.
    pub numeric_ids: bool,
}

impl Default for Ownership {
    fn default() -> Self {
        Self {
            owner: true,
            group: true,
            numeric_ids: false,
        }
    }
}

/// Gives each entry the names of its owner and group in this host's user database, and leaves
/// out what `ownership` turns off. An id without a name here, or with one longer than
/// [`MAX_OWNER_NAME`] bytes as the manifest writes names, crosses as the number alone. Each id
/// is looked up once.
pub fn name_entries<'a>(entries: impl IntoIterator<Item = &'a mut Entry>, ownership: Ownership) {
    let mut users: HashMap<u32, String> = HashMap::new();
    let mut groups: HashMap<u32, String> = HashMap::new();
    let wire = |name: Option<Vec<u8>>| {
        name.map(|n| sluice_proto::path::name_from_bytes(&n).into_owned())
            .filter(|n| n.len() <= MAX_OWNER_NAME && !n.contains('\0'))
            .unwrap_or_default()
    };
    for e in entries {
        let o = &mut e.owner;
        if !ownership.owner {
            o.uid = None;
        }
        if !ownership.group {
            o.gid = None;
        }
        o.user = match o.uid {
            Some(uid) if !ownership.numeric_ids => users
                .entry(uid)
                .or_insert_with(|| wire(lookup::user_name(uid)))
                .clone(),
            _ => String::new(),
        };
        o.group = match o.gid {
            Some(gid) if !ownership.numeric_ids => groups
                .entry(gid)
                .or_insert_with(|| wire(lookup::group_name(gid)))
                .clone(),
            _ => String::new(),
        };
    }
}

/// The owner and group a receiver gives an entry: local ids, each `None` where it leaves that
/// to its own user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Given {
    /// The local user id given.
    pub uid: Option<u32>,
    /// The local group id given.
    pub gid: Option<u32>,
}

impl Given {
    /// The permission bits an entry given this may keep: setuid only with its owner given,
    /// setgid only with its group; the sticky and permission bits always.
    pub fn mode_mask(self) -> u32 {
        let mut mask = 0o1777;
        if self.uid.is_some() {
            mask |= 0o4000;
        }
        if self.gid.is_some() {
            mask |= 0o2000;
        }
        mask
    }

    /// Drops an id of `u32::MAX`, which `chown(2)` reads as "leave alone" (a local database
    /// could hold one; the wire cannot).
    fn without_unset(self) -> Self {
        Self {
            uid: self.uid.filter(|&id| id != u32::MAX),
            gid: self.gid.filter(|&id| id != u32::MAX),
        }
    }

    /// Whether anything is given.
    pub fn any(self) -> bool {
        self.uid.is_some() || self.gid.is_some()
    }

    /// The rustix form of the ids, for `fchown` and `chownat`.
    pub fn rustix(self) -> (Option<rustix::fs::Uid>, Option<rustix::fs::Gid>) {
        (
            self.uid.map(rustix::fs::Uid::from_raw),
            self.gid.map(rustix::fs::Gid::from_raw),
        )
    }
}

impl std::fmt::Display for Given {
    /// `1234:5678`, `1234` (owner alone) or `:5678` (group alone), as `chown` takes them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.uid, self.gid) {
            (Some(u), Some(g)) => write!(f, "{u}:{g}"),
            (Some(u), None) => write!(f, "{u}"),
            (None, Some(g)) => write!(f, ":{g}"),
            (None, None) => f.write_str("nobody in particular"),
        }
    }
}

/// What a receiver does with the owners a sender lists: whether it gives any
/// ([`Ownership`] and [`may_give_away`]), and the local ids of the names it has looked up
/// (each name once per run; shared by clones).
#[derive(Debug, Clone)]
pub struct Owners {
    ownership: Ownership,
    give: bool,
    users: Arc<Mutex<HashMap<String, Option<u32>>>>,
    groups: Arc<Mutex<HashMap<String, Option<u32>>>>,
}

impl Default for Owners {
    /// Gives nothing: every entry belongs to the receiving user.
    fn default() -> Self {
        Self {
            ownership: Ownership::default(),
            give: false,
            users: Arc::default(),
            groups: Arc::default(),
        }
    }
}

impl Owners {
    /// Gives what `ownership` asks for if this process may give files away, else nothing.
    pub fn new(ownership: Ownership) -> Self {
        Self {
            ownership,
            give: (ownership.owner || ownership.group) && may_give_away(),
            ..Self::default()
        }
    }

    /// Whether this receiver gives entries owners at all.
    pub fn gives(&self) -> bool {
        self.give
    }

    /// What an entry the sender lists with `owner` is given here.
    pub fn given(&self, owner: &Owner) -> Given {
        if !self.give {
            return Given::default();
        }
        let by_name = !self.ownership.numeric_ids;
        Given {
            uid: owner.uid.filter(|_| self.ownership.owner).map(|uid| {
                match by_name && !owner.user.is_empty() {
                    true => local_id(&self.users, &owner.user, lookup::user_id).unwrap_or(uid),
                    false => uid,
                }
            }),
            gid: owner.gid.filter(|_| self.ownership.group).map(|gid| {
                match by_name && !owner.group.is_empty() {
                    true => local_id(&self.groups, &owner.group, lookup::group_id).unwrap_or(gid),
                    false => gid,
                }
            }),
        }
        .without_unset()
    }
}

/// The local id of `name` (as the manifest writes names), looked up once with `find`.
fn local_id(
    cache: &Mutex<HashMap<String, Option<u32>>>,
    name: &str,
    find: fn(&[u8]) -> Option<u32>,
) -> Option<u32> {
    let mut known = cache.lock().unwrap_or_else(|e| e.into_inner());
    // A name per distinct owner: a hostile sender could send many, so the cache is bounded
    // (past it, names are looked up again).
    const MAX: usize = 4096;
    if let Some(id) = known.get(name) {
        return *id;
    }
    let id = find(&sluice_proto::path::name_to_bytes(name));
    if known.len() >= MAX {
        known.clear();
    }
    known.insert(name.to_owned(), id);
    id
}

/// Whether this process may give files away and keep their setuid and setgid bits: its
/// effective capabilities hold `CAP_CHOWN` (give a file to anyone), `CAP_FOWNER` (change the
/// mode of a file it no longer owns) and `CAP_FSETID` (set setgid for a group it is not in), as
/// root's do. Read from `/proc/self/status`; where that cannot be read, whether the effective
/// user is root.
pub fn may_give_away() -> bool {
    const NEEDED: u64 = 1 << 0 | 1 << 3 | 1 << 4;
    let effective = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        });
    match effective {
        Some(caps) => caps & NEEDED == NEEDED,
        None => rustix::process::geteuid().is_root(),
    }
}

/// The system's user and group database, through the C library's reentrant lookups
/// (`getpwuid_r`, `getgrgid_r`, `getpwnam_r`, `getgrnam_r`, by way of the `nix` crate, which
/// owns their buffers and their `unsafe`). Names cross as bytes; `nix` gives them as UTF-8
/// strings, so a name that is not UTF-8 counts as unknown here and its entry goes by number, as
/// for a name the other end's database lacks.
mod lookup {
    use nix::unistd::{Gid, Group, Uid, User};

    /// A name as `nix` read it, unless the C library's bytes were not UTF-8 (replaced, they
    /// would name someone else).
    fn exact(name: String) -> Option<Vec<u8>> {
        (!name.contains(char::REPLACEMENT_CHARACTER)).then(|| name.into_bytes())
    }

    /// A name to look up: UTF-8 and without a NUL, or none.
    fn looked_up(name: &[u8]) -> Option<&str> {
        std::str::from_utf8(name).ok().filter(|n| !n.contains('\0'))
    }

    /// The name of user `uid`, if the database has one.
    pub fn user_name(uid: u32) -> Option<Vec<u8>> {
        let user = User::from_uid(Uid::from_raw(uid)).ok()??;
        exact(user.name)
    }

    /// The name of group `gid`, if the database has one.
    pub fn group_name(gid: u32) -> Option<Vec<u8>> {
        let group = Group::from_gid(Gid::from_raw(gid)).ok()??;
        exact(group.name)
    }

    /// The id of the user named `name`, if the database knows it.
    pub fn user_id(name: &[u8]) -> Option<u32> {
        let user = User::from_name(looked_up(name)?).ok()??;
        Some(user.uid.as_raw())
    }

    /// The id of the group named `name`, if the database knows it.
    pub fn group_id(name: &[u8]) -> Option<u32> {
        let group = Group::from_name(looked_up(name)?).ok()??;
        Some(group.gid.as_raw())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// root is user 0 and group 0 on every Linux; a name nobody has maps to nothing.
    #[test]
    fn the_user_database_answers_both_ways() {
        assert_eq!(lookup::user_name(0).as_deref(), Some(&b"root"[..]));
        assert_eq!(lookup::group_name(0).as_deref(), Some(&b"root"[..]));
        assert_eq!(lookup::user_id(b"root"), Some(0));
        assert_eq!(lookup::group_id(b"root"), Some(0));
        assert_eq!(lookup::user_id(b"no-such-user-of-sluice"), None);
        assert_eq!(lookup::group_id(b"no-such-group-of-sluice"), None);
        assert_eq!(lookup::user_id(b"nul\0inside"), None);
    }

    fn entry(uid: u32, gid: u32) -> Entry {
        Entry {
            id: 0,
            kind: sluice_proto::message::EntryKind::File,
            path: "f".into(),
            mode: 0o6755,
            mtime_sec: 0,
            mtime_nsec: 0,
            size: 0,
            link_target: String::new(),
            version: [0; 16],
            owner: Owner {
                uid: Some(uid),
                gid: Some(gid),
                ..Owner::default()
            },
        }
    }

    /// A sender names known ids, sends an unknown one as its number, and leaves out what
    /// `--no-owner`, `--no-group` and `--numeric-ids` turn off.
    #[test]
    fn a_sender_names_owners_or_leaves_them_out() {
        let mut es = [entry(0, 0), entry(4_000_000_001, 4_000_000_002)];
        name_entries(&mut es, Ownership::default());
        assert_eq!(
            (es[0].owner.user.as_str(), es[0].owner.group.as_str()),
            ("root", "root")
        );
        assert_eq!(es[1].owner, entry(4_000_000_001, 4_000_000_002).owner);
        let mut es = [entry(0, 0)];
        let numeric = Ownership {
            numeric_ids: true,
            ..Ownership::default()
        };
        name_entries(&mut es, numeric);
        assert_eq!(es[0].owner, entry(0, 0).owner);
        let mut es = [entry(0, 0)];
        let none = Ownership {
            owner: false,
            group: false,
            numeric_ids: false,
        };
        name_entries(&mut es, none);
        assert_eq!(es[0].owner, Owner::default());
    }

    /// A receiver that gives owners maps names it knows, keeps the number of a name it does
    /// not (or with `--numeric-ids`), and keeps setuid/setgid only with what it gave.
    #[test]
    fn a_receiver_maps_names_and_falls_back_to_numbers() {
        let owners = Owners {
            give: true,
            ..Owners::default()
        };
        let root = Owner {
            uid: Some(1234),
            gid: Some(5678),
            user: "root".into(),
            group: "root".into(),
        };
        assert_eq!(
            owners.given(&root),
            Given {
                uid: Some(0),
                gid: Some(0)
            }
        );
        let unknown = Owner {
            user: "no-such-user-of-sluice".into(),
            group: String::new(),
            ..root.clone()
        };
        let numbers = Given {
            uid: Some(1234),
            gid: Some(5678),
        };
        assert_eq!(owners.given(&unknown), numbers);
        let numeric = Owners {
            ownership: Ownership {
                numeric_ids: true,
                ..Ownership::default()
            },
            ..owners.clone()
        };
        assert_eq!(numeric.given(&root), numbers);
        let no_owner = Owners {
            ownership: Ownership {
                owner: false,
                ..Ownership::default()
            },
            ..owners.clone()
        };
        let group_only = no_owner.given(&root);
        assert_eq!(
            group_only,
            Given {
                uid: None,
                gid: Some(0)
            }
        );
        assert_eq!(0o6755 & group_only.mode_mask(), 0o2755);
        assert_eq!(0o6755 & numbers.mode_mask(), 0o6755);
        assert_eq!(0o7755 & Given::default().mode_mask(), 0o1755);
        assert_eq!(Owners::default().given(&root), Given::default());
        assert_eq!(numbers.to_string(), "1234:5678");
    }
}
