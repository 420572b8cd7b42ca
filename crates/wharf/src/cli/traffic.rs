//! Traffic edits as `gcloud run services update-traffic` makes them, computed on the client
//! from the service's current traffic and sent as a whole new `traffic` list (the server
//! checks it: known revisions, ready ones only, percents summing to 100, unique DNS-label tags).

use std::collections::BTreeMap;

use anyhow::{Context as _, bail};
use wharf_api::{Service, TRAFFIC_LATEST, TRAFFIC_REVISION, TrafficTarget};

/// Who a target points at: the latest ready revision, or one revision by name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    Latest,
    Revision(String),
}

/// A service's traffic as percents per target plus tags per target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Traffic {
    pub percents: BTreeMap<Target, i32>,
    pub tags: BTreeMap<String, Target>,
}

fn target_of(t: &TrafficTarget) -> Target {
    if t.kind.as_deref() == Some(TRAFFIC_LATEST) || (t.kind.is_none() && t.revision.is_empty()) {
        Target::Latest
    } else {
        Target::Revision(t.revision.clone())
    }
}

impl Traffic {
    pub fn of(service: &Service) -> Traffic {
        let mut traffic = Traffic::default();
        let targets = if service.traffic.is_empty() {
            vec![TrafficTarget { kind: Some(TRAFFIC_LATEST.into()), percent: 100, ..TrafficTarget::default() }]
        } else {
            service.traffic.clone()
        };
        for t in &targets {
            if t.percent > 0 {
                *traffic.percents.entry(target_of(t)).or_default() += t.percent;
            }
            if !t.tag.is_empty() {
                traffic.tags.insert(t.tag.clone(), target_of(t));
            }
        }
        traffic
    }

    /// The API's `traffic` list: one entry per target with a percent, one per tag.
    pub fn to_api(&self) -> Vec<TrafficTarget> {
        let entry = |target: &Target, percent: i32, tag: &str| match target {
            Target::Latest => TrafficTarget {
                kind: Some(TRAFFIC_LATEST.into()),
                percent,
                tag: tag.to_owned(),
                ..TrafficTarget::default()
            },
            Target::Revision(r) => {
                TrafficTarget { kind: Some(TRAFFIC_REVISION.into()), revision: r.clone(), percent, tag: tag.to_owned() }
            }
        };
        let mut out: Vec<TrafficTarget> = self.percents.iter().map(|(t, p)| entry(t, *p, "")).collect();
        out.extend(self.tags.iter().map(|(tag, t)| entry(t, 0, tag)));
        out
    }

    /// `--to-latest`.
    pub fn send_all_to_latest(&mut self) {
        self.percents = BTreeMap::from([(Target::Latest, 100)]);
    }

    /// `--to-revisions`/`--to-tags`: the named targets get their percents; if they sum to
    /// less than 100, the other current targets share the rest in proportion.
    pub fn assign(&mut self, assigned: Vec<(Target, i32)>) -> anyhow::Result<()> {
        let total: i32 = assigned.iter().map(|(_, p)| *p).sum();
        if assigned.iter().any(|(_, p)| !(0..=100).contains(p)) || total > 100 {
            bail!("traffic percents must be between 0 and 100 and sum to at most 100 (got {total})");
        }
        let mut next: BTreeMap<Target, i32> = BTreeMap::new();
        for (target, percent) in &assigned {
            next.insert(target.clone(), *percent);
        }
        let rest = 100 - total;
        if rest > 0 {
            let others: Vec<(Target, i32)> =
                self.percents.iter().filter(|(t, _)| !next.contains_key(*t)).map(|(t, p)| (t.clone(), *p)).collect();
            let others_total: i32 = others.iter().map(|(_, p)| *p).sum();
            if others_total == 0 {
                bail!("traffic percents sum to {total}; give targets summing to 100");
            }
            let mut given = 0;
            for (i, (target, percent)) in others.iter().enumerate() {
                let share = if i + 1 == others.len() { rest - given } else { rest * percent / others_total };
                given += share;
                next.insert(target.clone(), share);
            }
        }
        next.retain(|_, p| *p > 0);
        self.percents = next;
        Ok(())
    }
}

/// Parses `NAME=PERCENT,...` (or `NAME=VALUE` for tags).
pub fn pairs(flag: &str, text: &str) -> anyhow::Result<Vec<(String, String)>> {
    text.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .with_context(|| format!("{flag}: {p:?} is not NAME=VALUE"))
        })
        .collect()
}

pub fn percent(flag: &str, text: &str) -> anyhow::Result<i32> {
    text.parse().with_context(|| format!("{flag}: {text:?} is not a percent"))
}

/// Resolves a revision name as users write it: `LATEST`, a full name, or a unique prefix such
/// as `my-api-00001` for `my-api-00001-abc`.
pub fn resolve_revision(name: &str, known: &[String]) -> anyhow::Result<Target> {
    if name == "LATEST" {
        return Ok(Target::Latest);
    }
    if known.iter().any(|k| k == name) {
        return Ok(Target::Revision(name.to_owned()));
    }
    let matches: Vec<&String> = known.iter().filter(|k| k.starts_with(&format!("{name}-"))).collect();
    match matches.as_slice() {
        [one] => Ok(Target::Revision((*one).clone())),
        [] => bail!("revision {name:?} does not exist; see `wharf run revisions list`"),
        _ => bail!(
            "revision {name:?} is ambiguous: {}",
            matches.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(n: &str) -> Target {
        Target::Revision(n.into())
    }

    #[test]
    fn canary_then_cutover_then_rollback() {
        let mut t = Traffic::of(&Service::default());
        assert_eq!(t.percents, BTreeMap::from([(Target::Latest, 100)]));
        t.assign(vec![(rev("a"), 90), (rev("b"), 10)]).unwrap();
        assert_eq!(t.percents, BTreeMap::from([(rev("a"), 90), (rev("b"), 10)]));
        t.assign(vec![(rev("b"), 50)]).unwrap();
        assert_eq!(t.percents, BTreeMap::from([(rev("a"), 50), (rev("b"), 50)]));
        t.send_all_to_latest();
        t.assign(vec![(rev("a"), 100)]).unwrap();
        assert_eq!(t.percents, BTreeMap::from([(rev("a"), 100)]));
        t.assign(vec![(rev("a"), 120)]).unwrap_err();
    }

    #[test]
    fn tags_round_trip_through_the_api_form() {
        let mut t = Traffic::default();
        t.percents.insert(rev("a"), 100);
        t.tags.insert("green".into(), rev("b"));
        let service = Service { traffic: t.to_api(), ..Service::default() };
        assert_eq!(Traffic::of(&service), t);
    }

    #[test]
    fn revision_prefixes() {
        let known = vec!["api-00001-abc".to_owned(), "api-00002-xyz".to_owned()];
        assert_eq!(resolve_revision("api-00001", &known).unwrap(), rev("api-00001-abc"));
        assert_eq!(resolve_revision("LATEST", &known).unwrap(), Target::Latest);
        resolve_revision("api-0000", &known).unwrap_err();
        resolve_revision("nope", &known).unwrap_err();
    }
}
