//! Which image is newest, by its tag: WMF's build names each `mediawiki-multiversion` image
//! `YYYY-MM-DD-HHMMSS-FLAVOUR`, where the flavour is `publish` (the production build) or
//! `publish-SUFFIX` (another flavour built at the same time: scap's `mw_flavour`, e.g.
//! `publish-experimental`; deployment-charts pins `...-publish-83` for mediawiki-dumps-legacy).
//! So the date-time (UTC) alone says how new an image is; a suffix never makes one newer.
//! Between images of the same date-time (one build, several flavours) the plain `publish` is
//! taken, else the largest numeric suffix (`-10` before `-9`, as this tool always ordered
//! them), else the smallest other suffix (byte order), so the choice is stable. Tags in any
//! other form are ordered by the image's creation time on the same time axis. This module is
//! pure: it must never look at anything but the strings and times it is given.

use super::Candidate;
use std::cmp::Ordering;

/// A parsed publish tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishTag<'a> {
    /// Unix time of the date-time in the tag (UTC).
    pub time: i64,
    /// The flavour's suffix after `publish-` (`None` for plain `publish`).
    pub suffix: Option<&'a str>,
}

/// `2024-08-08-135932-publish` or `2024-08-08-135932-publish-83` -> its time and suffix.
pub fn parse_publish_tag(tag: &str) -> Option<PublishTag<'_>> {
    let dt = tag.get(..17)?;
    let rest = tag.get(17..)?;
    let suffix = match rest.strip_prefix("-publish")? {
        "" => None,
        s => {
            let s = s.strip_prefix('-')?;
            let ok = !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
            if !ok {
                return None;
            }
            Some(s)
        }
    };
    let b = dt.as_bytes();
    if b[4] != b'-' || b[7] != b'-' || b[10] != b'-' {
        return None;
    }
    let digits = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = &dt[r];
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())
            .flatten()
    };
    let rfc = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        digits(0..4)?,
        digits(5..7)?,
        digits(8..10)?,
        digits(11..13)?,
        digits(13..15)?,
        digits(15..17)?
    );
    let t = humantime::parse_rfc3339(&rfc).ok()?;
    let time = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs() as i64;
    Some(PublishTag { time, suffix })
}

/// Orders two candidates: greater is newer (see the module's rules).
pub fn newer(a: &Candidate, b: &Candidate) -> Ordering {
    let time = |c: &Candidate| match parse_publish_tag(&c.tag) {
        Some(p) => p.time,
        None => c.created.unwrap_or(i64::MIN),
    };
    time(a)
        .cmp(&time(b))
        .then_with(|| {
            // Same time: plain `publish` first, then numeric suffixes (the larger number), then
            // other suffixes (the smaller in byte order), then tags of another form.
            let rank = |c: &Candidate| match parse_publish_tag(&c.tag) {
                Some(PublishTag { suffix: None, .. }) => (3, 0, String::new()),
                Some(PublishTag {
                    suffix: Some(s), ..
                }) => match s.parse::<u64>() {
                    Ok(n) if s.bytes().all(|b| b.is_ascii_digit()) => (2, n, String::new()),
                    _ => (1, 0, s.to_string()),
                },
                None => (0, 0, String::new()),
            };
            let (ra, na, sa) = rank(a);
            let (rb, nb, sb) = rank(b);
            ra.cmp(&rb).then(na.cmp(&nb)).then_with(|| sb.cmp(&sa))
        })
        .then_with(|| a.reference.cmp(&b.reference))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(tag: &str, created: Option<i64>) -> Candidate {
        Candidate {
            reference: format!("r:{tag}"),
            tag: tag.into(),
            digest: String::new(),
            created,
        }
    }

    fn newest(c: &[Candidate]) -> &str {
        &c.iter().max_by(|a, b| newer(a, b)).unwrap().tag
    }

    #[test]
    fn production_tags_with_and_without_suffix_parse() {
        let plain = parse_publish_tag("2024-08-08-135932-publish").unwrap();
        assert_eq!(plain.suffix, None);
        assert_eq!(plain.time, 1723125572); // 2024-08-08T13:59:32Z
        let flavour = parse_publish_tag("2024-08-08-135932-publish-81").unwrap();
        assert_eq!(flavour.suffix, Some("81"));
        assert_eq!(flavour.time, plain.time);
        assert_eq!(
            parse_publish_tag("2024-08-08-135932-publish-experimental")
                .unwrap()
                .suffix,
            Some("experimental")
        );
        for bad in [
            "2024-08-08-135932-publish-",
            "2024-08-08-135932-publishx",
            "2024-08-08-135932-published",
            "2024-13-08-135932-publish",
            "2024-08-08-135960x-publish",
            "2024-08-08_135932-publish",
            "2024-08-08-135932-publish-a/b",
            "latest",
            "",
        ] {
            assert!(parse_publish_tag(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn the_timestamp_orders_and_a_suffix_never_makes_an_image_newer() {
        let c = vec![
            cand("2024-08-08-135932-publish-99", None),
            cand("2024-08-09-000000-publish", None),
            cand("2024-08-08-235959-publish-81", None),
        ];
        assert_eq!(newest(&c), "2024-08-09-000000-publish");
        // One build in several flavours: plain `publish`, else the largest numeric suffix,
        // else the smallest other one.
        let c = vec![
            cand("2024-08-08-135932-publish-83", None),
            cand("2024-08-08-135932-publish", None),
            cand("2024-08-08-135932-publish-81", None),
        ];
        assert_eq!(newest(&c), "2024-08-08-135932-publish");
        let c = vec![
            cand("2024-08-08-135932-publish-9", None),
            cand("2024-08-08-135932-publish-10", None),
        ];
        assert_eq!(newest(&c), "2024-08-08-135932-publish-10");
        let c = vec![
            cand("2024-08-08-135932-publish-experimental", None),
            cand("2024-08-08-135932-publish-debug", None),
            cand("2024-08-08-135932-publish-1", None),
        ];
        assert_eq!(newest(&c), "2024-08-08-135932-publish-1");
        let c = vec![
            cand("2024-08-08-135932-publish-experimental", None),
            cand("2024-08-08-135932-publish-debug", None),
        ];
        assert_eq!(newest(&c), "2024-08-08-135932-publish-debug");
    }

    #[test]
    fn other_tags_order_by_creation_time_on_the_same_axis() {
        let t = parse_publish_tag("2026-11-20-101010-publish-1")
            .unwrap()
            .time;
        let c = vec![
            cand("2026-11-20-101010-publish-1", None),
            cand("latest", Some(t + 60)),
            cand("old", Some(t - 60)),
        ];
        assert_eq!(newest(&c), "latest");
        let c = vec![
            cand("2026-11-20-101010-publish", None),
            cand("hand-made", Some(t - 1)),
            cand("no-date", None),
        ];
        assert_eq!(newest(&c), "2026-11-20-101010-publish");
    }
}
