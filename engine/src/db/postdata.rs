//! `pg_dump`'s post-data section cut by table: the indexes and the primary-key, unique and
//! exclusion constraints of one table can be built as soon as that table's rows are committed,
//! beside the next table's rows (as pgcopydb does), instead of all of them one after another
//! once the last row has arrived. Everything else — foreign keys, triggers, rules, policies,
//! indexes of partitioned tables and their attachments, comments — stays in one piece that runs
//! after every table's part.
//!
//! `pg_dump`'s plain output is a preamble of `SET` statements, then one entry per object, each
//! opened by a comment header (`-- Name: TAG; Type: KIND; Schema: NS; Owner: ROLE`). Between
//! entries it sets `default_tablespace` and `default_table_access_method` for the entries that
//! follow; each piece here carries the preamble and the settings its entries were dumped under,
//! so it runs the same on a connection of its own.

use std::collections::BTreeMap;

/// The post-data section, cut.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PostData {
    /// Per table (by [`super::Table::qualified`]): the SQL that builds its indexes and key
    /// constraints.
    pub tables: BTreeMap<String, String>,
    /// Everything else, in the dump's order; runs after every table's part.
    pub rest: String,
}

/// One object of the dump that belongs to a single table: its header's schema, tag and kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The schema the header names.
    pub schema: &'a str,
    /// The header's name: an index's name, or `TABLE CONSTRAINT` for a constraint.
    pub tag: &'a str,
    /// `INDEX` or `CONSTRAINT`.
    pub kind: &'a str,
}

/// The schema step that carries `table`'s part.
pub fn step(table: &super::Table) -> String {
    format!("post-data {}", table.qualified())
}

/// Cuts `dump` (plain `pg_dump --section=post-data` output). `owner` names the table an
/// [`Entry`] builds something on, if it is one whose rows this run moves; an entry it does not
/// claim stays in [`PostData::rest`].
pub fn split(dump: &str, owner: impl Fn(Entry<'_>) -> Option<String>) -> PostData {
    let lines: Vec<&str> = dump.split_inclusive('\n').collect();
    let header = |i: usize| -> Option<&str> {
        let line = lines[i].strip_prefix("-- Name: ")?;
        (i > 0 && lines[i - 1].trim_end() == "--").then(|| line.trim_end())
    };
    let first = (0..lines.len()).find(|&i| header(i).is_some());
    let Some(first) = first else {
        return PostData {
            tables: BTreeMap::new(),
            rest: dump.to_string(),
        };
    };
    // The preamble ends before the "--" that opens the first header.
    let mut preamble = String::new();
    let mut settings: Vec<String> = Vec::new();
    for line in &lines[..first - 1] {
        if is_setting(line) {
            set(&mut settings, line);
        } else {
            preamble.push_str(line);
        }
    }
    let mut out = PostData::default();
    let mut rest_body = String::new();
    let mut i = first - 1;
    while i < lines.len() {
        // An entry: its "--" line, its header, and what follows up to the next entry's "--".
        let head = header(i + 1).expect("the loop stops at headers");
        let mut end = i + 2;
        while end < lines.len() && !(end + 1 < lines.len() && header(end + 1).is_some()) {
            end += 1;
        }
        let mut body = String::new();
        let mut next_settings = settings.clone();
        for line in &lines[i..end] {
            if is_setting(line) {
                // Said for the entries after this one.
                set(&mut next_settings, line);
            } else {
                body.push_str(line);
            }
        }
        let mut piece: String = settings.concat();
        piece.push_str(&body);
        match parse_header(head).and_then(&owner) {
            Some(table) => {
                let sql = out.tables.entry(table).or_insert_with(|| preamble.clone());
                sql.push_str(&piece);
            }
            None => rest_body.push_str(&piece),
        }
        settings = next_settings;
        i = end;
    }
    out.rest = preamble;
    out.rest.push_str(&rest_body);
    out
}

/// The header `TAG; Type: KIND; Schema: NS; Owner: ROLE[; Tablespace: T]` as an [`Entry`], if
/// it is of a kind that can belong to one table.
fn parse_header(head: &str) -> Option<Entry<'_>> {
    let (tag, after) = head.split_once("; Type: ")?;
    let (kind, after) = after.split_once("; Schema: ")?;
    let (schema, _) = after.split_once("; Owner: ")?;
    // A tag that itself holds the separators cannot be read back for sure: not claimed.
    if tag.contains("; Type: ") || schema.contains("; ") {
        return None;
    }
    matches!(kind, "INDEX" | "CONSTRAINT").then_some(Entry { schema, tag, kind })
}

/// A line that sets what later entries are made with.
fn is_setting(line: &str) -> bool {
    line.starts_with("SET default_tablespace = ")
        || line.starts_with("SET default_table_access_method = ")
}

/// Records `line` in `settings`, replacing the earlier value of the same setting.
fn set(settings: &mut Vec<String>, line: &str) {
    let name = line.split(" = ").next().unwrap_or(line);
    settings.retain(|s| s.split(" = ").next() != Some(name));
    let mut line = line.to_string();
    if !line.ends_with('\n') {
        line.push('\n');
    }
    settings.push(line);
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = "--\n-- PostgreSQL database dump\n--\n\nSET statement_timeout = 0;\n\
SELECT pg_catalog.set_config('search_path', '', false);\n\nSET default_tablespace = '';\n\n\
--\n-- Name: a a_pkey; Type: CONSTRAINT; Schema: public; Owner: me\n--\n\n\
ALTER TABLE ONLY public.a\n    ADD CONSTRAINT a_pkey PRIMARY KEY (id);\n\n\n\
SET default_tablespace = fast;\n\n\
--\n-- Name: b_x; Type: INDEX; Schema: public; Owner: me; Tablespace: fast\n--\n\n\
CREATE INDEX b_x ON public.b USING btree (x);\n\n\n\
SET default_tablespace = '';\n\n\
--\n-- Name: b b_a_fkey; Type: FK CONSTRAINT; Schema: public; Owner: me\n--\n\n\
ALTER TABLE ONLY public.b\n    ADD CONSTRAINT b_a_fkey FOREIGN KEY (a) REFERENCES public.a(id);\n\n\n\
--\n-- Name: a a_u; Type: CONSTRAINT; Schema: public; Owner: me\n--\n\n\
ALTER TABLE ONLY public.a\n    ADD CONSTRAINT a_u UNIQUE (v);\n\n\n\
--\n-- PostgreSQL database dump complete\n--\n\n";

    fn owner(e: Entry<'_>) -> Option<String> {
        match (e.schema, e.tag) {
            ("public", "a a_pkey") | ("public", "a a_u") => Some("public.a".into()),
            ("public", "b_x") => Some("public.b".into()),
            _ => None,
        }
    }

    #[test]
    fn each_table_gets_its_indexes_and_keys_with_the_settings_they_were_dumped_under() {
        let p = split(DUMP, owner);
        assert_eq!(p.tables.len(), 2);
        let a = &p.tables["public.a"];
        assert!(a.starts_with("--\n-- PostgreSQL database dump"));
        assert!(a.contains("SELECT pg_catalog.set_config('search_path'"));
        assert!(a.contains("ADD CONSTRAINT a_pkey") && a.contains("ADD CONSTRAINT a_u"));
        assert!(!a.contains("b_x") && !a.contains("FOREIGN KEY"));
        // a_u was dumped after the tablespace went back to the default.
        let u = a.find("ADD CONSTRAINT a_u").unwrap();
        assert_eq!(a[..u].matches("SET default_tablespace = '';").count(), 2);
        assert!(!a.contains("fast"));
        let b = &p.tables["public.b"];
        assert!(b.contains("SET default_tablespace = fast;\n--\n-- Name: b_x;"));
        assert!(b.contains("CREATE INDEX b_x ON public.b"));
        // The foreign key stays behind, under the setting of its place in the dump.
        assert!(p.rest.contains("SET statement_timeout = 0;"));
        assert!(p
            .rest
            .contains("SET default_tablespace = '';\n--\n-- Name: b b_a_fkey"));
        assert!(p.rest.contains("FOREIGN KEY") && !p.rest.contains("a_pkey"));
    }

    #[test]
    fn nothing_is_lost_or_doubled() {
        let p = split(DUMP, owner);
        let statements = |s: &str| {
            s.lines()
                .filter(|l| l.starts_with("ALTER TABLE") || l.starts_with("CREATE"))
                .count()
        };
        let total: usize =
            p.tables.values().map(|s| statements(s)).sum::<usize>() + statements(&p.rest);
        assert_eq!(total, statements(DUMP));
        // Claiming nothing gives the dump back with its settings where they were.
        let none = split(DUMP, |_| None);
        assert!(none.tables.is_empty());
        assert_eq!(statements(&none.rest), statements(DUMP));
        assert!(none
            .rest
            .contains("SET default_tablespace = fast;\n--\n-- Name: b_x;"));
    }

    #[test]
    fn a_dump_without_entries_is_all_rest() {
        let dump = "--\n-- PostgreSQL database dump\n--\n\nSET x = 1;\n";
        let p = split(dump, |_| Some("t".into()));
        assert!(p.tables.is_empty());
        assert_eq!(p.rest, dump);
    }

    #[test]
    fn headers_are_read_and_odd_ones_left_alone() {
        assert_eq!(
            parse_header("a b; Type: CONSTRAINT; Schema: s p; Owner: o"),
            Some(Entry {
                schema: "s p",
                tag: "a b",
                kind: "CONSTRAINT"
            })
        );
        assert_eq!(
            parse_header("t tr; Type: TRIGGER; Schema: s; Owner: o"),
            None
        );
        assert_eq!(
            parse_header("i; Type: INDEX ATTACH; Schema: s; Owner: o"),
            None
        );
        assert_eq!(parse_header("nonsense"), None);
    }
}
