//! What etcd says of one database (Patroni's keys under `/service/<database id>/`), and the rule
//! that judges a replica from it: diverged when its history forked from the leader's, not
//! streaming when its replication broke. Pure, so the rule is tested without a cluster.

use serde_json::Value;
use std::collections::BTreeMap;

/// A member's key (`members/<name>`), as Patroni 3.0 and 4.x write it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DcsMember {
    pub role: String,
    pub state: String,
    pub timeline: Option<i64>,
    /// `xlog_location`: the leader's written WAL, a replica's received or replayed WAL.
    pub lsn: Option<u64>,
    /// Patroni 4.x only: `streaming`, `in archive recovery`, …
    pub replication_state: Option<String>,
}

/// One database's keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DcsView {
    pub leader: Option<String>,
    pub sync: Vec<String>,
    pub members: BTreeMap<String, DcsMember>,
    /// Timeline history (`history`): each timeline that ended, and the LSN where it ended.
    pub history: Vec<(i64, u64)>,
    /// The leader's last written WAL as it published it (`status` or `optime/leader`).
    pub optime: Option<u64>,
}

fn lsn(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

impl DcsView {
    /// Reads the keys under `prefix` (`/service/<id>/`).
    pub fn parse(prefix: &str, kvs: &[(String, Vec<u8>)]) -> DcsView {
        let mut view = DcsView::default();
        for (key, value) in kvs {
            let Some(name) = key.strip_prefix(prefix) else { continue };
            let text = String::from_utf8_lossy(value);
            let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            match name {
                "leader" => view.leader = Some(text.trim().to_string()).filter(|l| !l.is_empty()),
                "sync" => {
                    // 3.0: one name; 4.x: names separated by commas.
                    view.sync = json["sync_standby"]
                        .as_str()
                        .map(|s| s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect())
                        .unwrap_or_default();
                }
                "history" => {
                    view.history = json
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|line| Some((line[0].as_i64()?, lsn(&line[1])?)))
                        .collect();
                }
                "status" => view.optime = view.optime.max(lsn(&json["optime"])),
                "optime/leader" => view.optime = view.optime.max(text.trim().parse().ok()),
                _ => {
                    if let Some(member) = name.strip_prefix("members/") {
                        let m = DcsMember {
                            role: json["role"].as_str().unwrap_or_default().to_string(),
                            state: json["state"].as_str().unwrap_or_default().to_string(),
                            timeline: json["timeline"].as_i64(),
                            lsn: lsn(&json["xlog_location"]),
                            replication_state: json["replication_state"].as_str().map(str::to_string),
                        };
                        view.members.insert(member.to_string(), m);
                    }
                }
            }
        }
        view
    }

    /// The leader's timeline and written WAL, as far as etcd says.
    pub fn leader_position(&self) -> Option<(i64, u64)> {
        let leader = self.members.get(self.leader.as_ref()?)?;
        let lsn = leader.lsn.max(self.optime)?;
        Some((leader.timeline?, lsn))
    }
}

/// Why a replica at `replica` (timeline, WAL position) cannot follow a leader at `leader` whose
/// timelines ended as `history` says, if it cannot: it is on a timeline the leader never had, or
/// on an older timeline past the point where the leader's history branched off it, or on the
/// leader's timeline ahead of the leader (a fork that reused the timeline number).
pub fn diverged(leader: (i64, u64), history: &[(i64, u64)], replica: (i64, u64)) -> Option<String> {
    let ((ltl, llsn), (rtl, rlsn)) = (leader, replica);
    if rtl > ltl {
        return Some(format!("on timeline {rtl}, which the leader (timeline {ltl}) never had"));
    }
    if rtl == ltl {
        return (rlsn > llsn).then(|| format!("ahead of the leader on timeline {rtl} ({rlsn} > {llsn})"));
    }
    let ended = history.iter().find(|(tl, _)| *tl == rtl)?.1;
    (rlsn > ended).then(|| format!("on timeline {rtl} past {ended}, where the leader's history branched off it"))
}

/// What the member's agent reports (for the rule, only when it reported lately).
#[derive(Debug, Clone, Copy)]
pub struct Reported<'a> {
    pub fresh: bool,
    pub state: &'a str,
    pub streaming_replicas: &'a [String],
}

/// What is wrong with a replica now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Suspect {
    Diverged(String),
    NotStreaming(String),
}

/// Judges `name` as a replica of the leader etcd names: `None` when it looks fine or cannot be
/// judged (no leader, it leads, its agent is silent, PostgreSQL is not up on it).
pub fn judge(view: &DcsView, name: &str, me: Reported, leader: Option<Reported>) -> Option<Suspect> {
    let leader_name = view.leader.as_deref()?;
    if leader_name == name || !me.fresh {
        return None;
    }
    let dcs = view.members.get(name);
    let own = me.state == "streaming" || dcs.and_then(|m| m.replication_state.as_deref()) == Some("streaming");
    let leader_fresh = leader.filter(|l| l.fresh);
    let seen_by_leader = leader_fresh.is_some_and(|l| l.streaming_replicas.iter().any(|r| r == name));
    let streams = own || seen_by_leader;
    if let (Some(lead), Some(m)) = (view.leader_position(), dcs) {
        if let (Some(tl), Some(lsn)) = (m.timeline, m.lsn) {
            // A replica that streams on the leader's timeline holds nothing the leader lacks:
            // what the leader sends is all it has. Its key "ahead" of the leader's is the
            // keys' ages (each member writes its own once a loop; under writes the replica's,
            // written later in the second, is ahead): judged so, a rewound old leader was
            // re-cloned 10 s after every partition in the lab.
            let skew = streams && tl == lead.0 && lsn > lead.1;
            if let Some(why) = diverged(lead, &view.history, (tl, lsn)).filter(|_| !skew) {
                return Some(Suspect::Diverged(why));
            }
        }
    }
    // PostgreSQL up as a replica (3.0 says `running`; 4.x `streaming` when it streams, `in
    // archive recovery` when it does not).
    if !matches!(me.state, "running" | "streaming" | "in archive recovery") {
        return None;
    }
    if streams {
        return None;
    }
    // Judged only with evidence: the leader's WAL senders as its agent sees them, or 4.x's own
    // replication state.
    let knows = leader_fresh.is_some() || dcs.is_some_and(|m| m.replication_state.is_some());
    knows.then(|| Suspect::NotStreaming(format!("not streaming from the leader {leader_name}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str, v: &str) -> (String, Vec<u8>) {
        (format!("/service/db/{k}"), v.as_bytes().to_vec())
    }

    fn view() -> DcsView {
        DcsView::parse(
            "/service/db/",
            &[
                kv("leader", "m1"),
                kv("sync", r#"{"leader":"m1","sync_standby":"m0"}"#),
                kv("history", r#"[[1,25165984,"no recovery target specified","2026-11-29T05:00:00+00:00","m1"]]"#),
                kv("status", r#"{"optime":50331648,"slots":{}}"#),
                kv("members/m1", r#"{"role":"master","state":"running","xlog_location":50331000,"timeline":2}"#),
                kv("members/m0", r#"{"role":"replica","state":"running","xlog_location":50331000,"timeline":2}"#),
            ],
        )
    }

    #[test]
    fn keys_of_patroni_3_and_4_parse() {
        let v = view();
        assert_eq!(v.leader.as_deref(), Some("m1"));
        assert_eq!(v.sync, vec!["m0".to_string()]);
        assert_eq!(v.history, vec![(1, 25165984)]);
        assert_eq!(v.leader_position(), Some((2, 50331648)));
        let v4 = DcsView::parse(
            "/service/db/",
            &[
                kv("sync", r#"{"leader":"m1","sync_standby":"m0,m2","quorum":0}"#),
                kv("members/m0", r#"{"role":"replica","state":"streaming","replication_state":"streaming"}"#),
            ],
        );
        assert_eq!(v4.sync, vec!["m0".to_string(), "m2".to_string()]);
        assert_eq!(v4.members["m0"].replication_state.as_deref(), Some("streaming"));
        assert_eq!(v4.leader, None);
    }

    #[test]
    fn the_divergence_rule() {
        let history = [(1, 1000), (2, 5000)];
        // Following: behind on the leader's timeline, or on an old timeline before its end.
        assert_eq!(diverged((3, 9000), &history, (3, 8000)), None);
        assert_eq!(diverged((3, 9000), &history, (3, 9000)), None);
        assert_eq!(diverged((3, 9000), &history, (2, 5000)), None);
        assert_eq!(diverged((3, 9000), &history, (1, 900)), None);
        // Forked: past the point where the leader's history left its timeline.
        assert!(diverged((3, 9000), &history, (2, 5001)).unwrap().contains("branched off"));
        assert!(diverged((3, 9000), &history, (1, 1200)).is_some());
        // A timeline the leader never had; the same number, but ahead of the leader.
        assert!(diverged((3, 9000), &history, (4, 10)).unwrap().contains("never had"));
        assert!(diverged((3, 9000), &history, (3, 9500)).unwrap().contains("ahead"));
        // A timeline the leader's (truncated) history does not mention is not judged.
        assert_eq!(diverged((9, 9000), &history, (5, 99999)), None);
    }

    #[test]
    fn replicas_are_judged_only_on_evidence() {
        let v = view();
        let fresh = |state: &'static str, streaming: &'static [String]| Reported {
            fresh: true,
            state,
            streaming_replicas: streaming,
        };
        let streams = vec!["m0".to_string()];
        let streams: &'static [String] = Box::leak(streams.into_boxed_slice());
        // Patroni 3.0: `running`; streaming says the leader's agent.
        assert_eq!(judge(&v, "m0", fresh("running", &[]), Some(fresh("running", streams))), None);
        assert!(matches!(
            judge(&v, "m0", fresh("running", &[]), Some(fresh("running", &[]))),
            Some(Suspect::NotStreaming(_))
        ));
        // 4.x says it itself; without any evidence (the leader's agent silent) nothing is judged.
        assert_eq!(judge(&v, "m0", fresh("streaming", &[]), None), None);
        let mut v4 = v.clone();
        v4.members.get_mut("m0").unwrap().replication_state = Some("in archive recovery".into());
        assert!(matches!(judge(&v4, "m0", fresh("in archive recovery", &[]), None), Some(Suspect::NotStreaming(_))));
        assert_eq!(judge(&v, "m0", fresh("running", &[]), None), None);
        // The leader, a silent member, a stopped one: not judged.
        assert_eq!(judge(&v, "m1", fresh("running", &[]), None), None);
        let silent = Reported { fresh: false, state: "running", streaming_replicas: &[] };
        assert_eq!(judge(&v, "m0", silent, Some(fresh("running", &[]))), None);
        assert_eq!(judge(&v, "m0", fresh("stopped", &[]), Some(fresh("running", &[]))), None);
        // A fork that kept the timeline number, ahead of the leader: it cannot stream (the
        // leader refuses a start past its own WAL), so it is diverged.
        let mut forked = v.clone();
        forked.members.get_mut("m0").unwrap().lsn = Some(60000000);
        assert!(matches!(
            judge(&forked, "m0", fresh("running", &[]), Some(fresh("running", &[]))),
            Some(Suspect::Diverged(_))
        ));
        assert!(matches!(judge(&forked, "m0", fresh("in archive recovery", &[]), None), Some(Suspect::Diverged(_))));
        // Streaming on the leader's timeline and "ahead" of its key by the keys' ages: fine.
        assert_eq!(judge(&forked, "m0", fresh("running", &[]), Some(fresh("running", streams))), None);
        assert_eq!(judge(&forked, "m0", fresh("streaming", &[]), None), None);
        // On an older timeline past the leader's branch point it is diverged, streaming or not.
        let mut branched = v.clone();
        let m0 = branched.members.get_mut("m0").unwrap();
        (m0.timeline, m0.lsn) = (Some(1), Some(25165985));
        assert!(matches!(judge(&branched, "m0", fresh("streaming", &[]), None), Some(Suspect::Diverged(_))));
    }
}
