//! A hand-written reader of the usual row-form REST body: `{"datasource": "...", "points": [{"name":
//! "...", "value": 1.5, "timestamp_ms": 1700000000000, "labels": {"k": "v", ...}}, ...]}`.
//!
//! serde_json reads such a body at about 0.4 µs a row, most of it delimiting each row's labels
//! object (ten or so short strings) as raw JSON. Rows of one series repeat their labels text, so
//! this reader first compares the bytes at a row's labels with the label texts it delimited last
//! (a complete object's text, so equal bytes are the same object and end at the same place), and
//! scans only a text it has not seen. It takes the body only in its plainest shape: no escape in
//! any string, no duplicate or unknown key, no `series` but an empty one, numbers as JSON numbers a
//! double holds exactly, labels an object of strings. Anything else gives None and serde_json, the
//! reference, reads the body (tests/unit/test_ingest_native.py compares both with the Python path).

use crate::{Body, JsonPoint, Obj, Str, Value};
use std::borrow::Cow;

/// Label texts remembered, most recent first.
const RECENT: usize = 16;

pub(crate) fn read(text: &str) -> Option<Body<'_>> {
    let mut r = Reader { text, b: text.as_bytes(), at: 0, recent: Vec::with_capacity(RECENT) };
    let mut datasource = None;
    let mut points = None;
    let mut series_seen = false;
    r.expect(b'{')?;
    if !r.eat(b'}') {
        loop {
            match r.string()? {
                "datasource" if datasource.is_none() => {
                    r.expect(b':')?;
                    datasource = Some(r.string()?);
                }
                "points" if points.is_none() => {
                    r.expect(b':')?;
                    points = Some(r.points()?);
                }
                "series" if !series_seen => {
                    r.expect(b':')?;
                    r.expect(b'[')?;
                    r.expect(b']')?;
                    series_seen = true;
                }
                _ => return None,
            }
            if r.eat(b'}') {
                break;
            }
            r.expect(b',')?;
        }
    }
    r.ws();
    if r.at != r.b.len() {
        return None;
    }
    Some(Body {
        datasource: Str(Cow::Borrowed(datasource.unwrap_or(""))),
        series: Vec::new(),
        points: points.unwrap_or_default(),
    })
}

struct Reader<'a> {
    text: &'a str,
    b: &'a [u8],
    at: usize,
    recent: Vec<&'a str>,
}

impl<'a> Reader<'a> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.at) {
            self.at += 1;
        }
    }

    /// Past whitespace, whether the next byte is `c` (taken if so).
    fn eat(&mut self, c: u8) -> bool {
        self.ws();
        if self.b.get(self.at) == Some(&c) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8) -> Option<()> {
        self.eat(c).then_some(())
    }

    /// A string without escapes or control characters (the body is valid UTF-8 already).
    fn string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let start = self.at;
        loop {
            match *self.b.get(self.at)? {
                b'"' => break,
                b'\\' | 0..=0x1f => return None,
                _ => self.at += 1,
            }
        }
        self.at += 1;
        self.text.get(start..self.at - 1)
    }

    /// A JSON number's text.
    fn number(&mut self) -> Option<&'a str> {
        self.ws();
        let start = self.at;
        let digits = |r: &mut Self| {
            let from = r.at;
            while r.b.get(r.at).is_some_and(u8::is_ascii_digit) {
                r.at += 1;
            }
            r.at > from
        };
        if self.b.get(self.at) == Some(&b'-') {
            self.at += 1;
        }
        match self.b.get(self.at)? {
            b'0' => self.at += 1,
            b'1'..=b'9' => {
                digits(self);
            }
            _ => return None,
        }
        if self.b.get(self.at) == Some(&b'.') {
            self.at += 1;
            digits(self).then_some(())?;
        }
        if let Some(b'e' | b'E') = self.b.get(self.at) {
            self.at += 1;
            if let Some(b'+' | b'-') = self.b.get(self.at) {
                self.at += 1;
            }
            digits(self).then_some(())?;
        }
        self.text.get(start..self.at)
    }

    /// An integer number of at most 18 digits (so it fits an i64 as written).
    fn integer(&mut self) -> Option<i64> {
        let t = self.number()?;
        let digits = t.strip_prefix('-').unwrap_or(t);
        if digits.len() > 18 || !digits.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        t.parse().ok()
    }

    /// A point's value as `Value` reads it ("-0" reaches it as -0.0 from serde_json); a double past
    /// the finite range, which serde_json refuses, is None too.
    fn value(&mut self) -> Option<Value> {
        let t = self.number()?;
        if t == "-0" {
            return Value::of_double(-0.0);
        }
        let digits = t.strip_prefix('-').unwrap_or(t);
        if digits.bytes().all(|c| c.is_ascii_digit()) {
            if digits.len() > 16 {
                return None; // serde's reading of long integers is the reference
            }
            let v: i64 = t.parse().ok()?;
            return Value::of_integer(v.unsigned_abs(), v as f64);
        }
        let v: f64 = t.parse().ok()?;
        Value::of_double(v).filter(|v| v.0.is_finite())
    }

    fn points(&mut self) -> Option<Vec<Obj<JsonPoint<'a>>>> {
        self.expect(b'[')?;
        let mut out = Vec::with_capacity(self.b.len() / 128);
        if self.eat(b']') {
            return Some(out);
        }
        loop {
            out.push(Obj(self.point()?));
            if self.eat(b']') {
                return Some(out);
            }
            self.expect(b',')?;
        }
    }

    fn point(&mut self) -> Option<JsonPoint<'a>> {
        self.expect(b'{')?;
        let (mut name, mut value, mut ts, mut labels) = (None, None, None, None);
        if !self.eat(b'}') {
            loop {
                let key = self.string()?;
                self.expect(b':')?;
                match key {
                    "name" if name.is_none() => name = Some(self.string()?),
                    "value" if value.is_none() => value = Some(self.value()?),
                    "timestamp_ms" if ts.is_none() => ts = Some(self.integer()?),
                    "labels" if labels.is_none() => labels = Some(self.labels()?),
                    _ => return None,
                }
                if self.eat(b'}') {
                    break;
                }
                self.expect(b',')?;
            }
        }
        Some(JsonPoint {
            name: Str(Cow::Borrowed(name.unwrap_or(""))),
            value: value.unwrap_or_default(),
            timestamp: Str::default(),
            timestamp_ms: ts.unwrap_or(0),
            labels,
        })
    }

    /// A labels object's text: one seen lately when the bytes here repeat it, else scanned (an
    /// object of strings) and remembered.
    fn labels(&mut self) -> Option<&'a str> {
        self.ws();
        let here = &self.b[self.at..];
        if let Some(i) = self.recent.iter().position(|t| here.starts_with(t.as_bytes())) {
            let t = self.recent[i];
            self.recent[..=i].rotate_right(1);
            self.at += t.len();
            return Some(t);
        }
        let start = self.at;
        self.expect(b'{')?;
        if !self.eat(b'}') {
            loop {
                self.string()?;
                self.expect(b':')?;
                self.string()?;
                if self.eat(b'}') {
                    break;
                }
                self.expect(b',')?;
            }
        }
        let t = self.text.get(start..self.at)?;
        if self.recent.len() == RECENT {
            self.recent.pop();
        }
        self.recent.insert(0, t);
        Some(t)
    }
}
