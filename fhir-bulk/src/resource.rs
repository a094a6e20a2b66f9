//! Parsing NDJSON lines into resources.
//!
//! * [`Resource`] is the default item type of a download: the resource type,
//!   id and `meta.lastUpdated` of a line, plus the whole line kept as raw
//!   JSON for a later [`Resource::parse`] into a richer type.
//! * [`parse_line`] parses a line into any `T: DeserializeOwned`, optionally
//!   checking its `resourceType` first with the cheap
//!   [`probe_resource_type`].
//! * [`deleted_resources`] reads a line of a bulk export's `deleted` file.
//! * [`block_header_reference`] recognises the header line that starts each
//!   block of an export organised with `organizeOutputBy`.
//! * [`Timestamp`] is a FHIR `instant`.

use std::any::{Any, TypeId};
use std::borrow::Cow;
use std::fmt;
use std::time::{Duration, SystemTime};

use serde::de::{self, DeserializeOwned, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

/// Why a line could not be turned into what was asked for.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The line is not valid UTF-8.
    #[error("invalid UTF-8: {0}")]
    InvalidUtf8(#[source] std::str::Utf8Error),
    /// The line is not valid JSON, or not the JSON the target type expects.
    #[error(transparent)]
    Json(JsonError),
    /// The line is valid JSON but not a JSON object (every NDJSON line of an export is one
    /// resource, an object).
    #[error("not a JSON object (an export line holds one resource, a JSON object)")]
    NotAnObject,
    /// The line's `resourceType` is not the expected one (`found` is `None`
    /// when the line has no `resourceType`).
    #[error("expected resourceType {expected:?}, found {}", describe_found(.found))]
    UnexpectedResourceType {
        /// The expected resource type.
        expected: String,
        /// The resource type of the line, if it has one.
        found: Option<String>,
    },
    /// A reference or URL does not name a resource type and id.
    #[error("cannot take a resource type and id from {0:?}")]
    InvalidReference(String),
}

impl From<serde_json::Error> for ParseError {
    fn from(error: serde_json::Error) -> Self {
        ParseError::Json(JsonError(error))
    }
}

/// Why a line is not the JSON expected: its message says what and where (line and column
/// within the NDJSON line). The parser's own error is its [`source`](std::error::Error::source).
#[derive(Debug)]
pub struct JsonError(serde_json::Error);

impl JsonError {
    /// The 1-based column (byte) within the line where the problem was found.
    pub fn column(&self) -> usize {
        self.0.column()
    }

    /// Whether the line ended before the JSON value did (a cut line).
    pub fn is_eof(&self) -> bool {
        self.0.is_eof()
    }
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for JsonError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

fn describe_found(found: &Option<String>) -> String {
    match found {
        Some(found) => format!("{found:?}"),
        None => "none".to_owned(),
    }
}

// ---------------------------------------------------------------------------
// Timestamp

/// A point in time with nanosecond precision, as in a FHIR `instant` such as
/// `meta.lastUpdated` (`2024-05-01T12:30:00.123+02:00`).
///
/// Kept as seconds and nanoseconds since the Unix epoch in UTC; the original
/// time zone offset is not kept. Displays (and serializes) as RFC 3339 in
/// UTC, with as many fractional digits as needed (0, 3, 6 or 9).
///
/// ```
/// use fhir_bulk::resource::Timestamp;
///
/// let t = Timestamp::parse("2024-05-01T12:30:00.5+02:00").unwrap();
/// assert_eq!(t.unix_seconds(), 1_714_559_400);
/// assert_eq!(t.subsec_nanos(), 500_000_000);
/// assert_eq!(t.to_string(), "2024-05-01T10:30:00.500Z");
/// assert!(Timestamp::parse("2024-05-01").is_none()); // not an instant
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    secs: i64,
    nanos: u32,
}

const SECS_PER_DAY: i64 = 86_400;
const NANOS_PER_SEC: u32 = 1_000_000_000;

impl Timestamp {
    /// 1970-01-01T00:00:00Z.
    pub const UNIX_EPOCH: Timestamp = Timestamp { secs: 0, nanos: 0 };

    /// A timestamp from seconds since the Unix epoch and nanoseconds;
    /// `None` if `nanos` is a second or more.
    pub fn from_unix(secs: i64, nanos: u32) -> Option<Self> {
        (nanos < NANOS_PER_SEC).then_some(Self { secs, nanos })
    }

    /// Whole seconds since the Unix epoch (negative before 1970).
    pub fn unix_seconds(&self) -> i64 {
        self.secs
    }

    /// The nanoseconds past [`unix_seconds`](Self::unix_seconds).
    pub fn subsec_nanos(&self) -> u32 {
        self.nanos
    }

    /// The same point as a [`SystemTime`], if the platform can represent
    /// it.
    pub fn to_system_time(&self) -> Option<SystemTime> {
        let secs = Duration::from_secs(self.secs.unsigned_abs());
        let whole = if self.secs >= 0 {
            SystemTime::UNIX_EPOCH.checked_add(secs)
        } else {
            SystemTime::UNIX_EPOCH.checked_sub(secs)
        };
        whole?.checked_add(Duration::from_nanos(u64::from(self.nanos)))
    }

    /// Parses a FHIR `instant`: `YYYY-MM-DDThh:mm:ss`, optional fractional
    /// seconds (any number of digits, kept to nanoseconds), then `Z` or
    /// `+hh:mm` / `-hh:mm`. A lowercase `t` or `z` is accepted. Returns
    /// `None` for anything else, including impossible dates.
    pub fn parse(text: &str) -> Option<Self> {
        let b = text.as_bytes();
        let year = digits(b, 0, 4)?;
        let month = digits(b, 5, 2)?;
        let day = digits(b, 8, 2)?;
        let hour = digits(b, 11, 2)?;
        let minute = digits(b, 14, 2)?;
        let second = digits(b, 17, 2)?;
        let separators_ok = b.get(4) == Some(&b'-')
            && b.get(7) == Some(&b'-')
            && matches!(b.get(10), Some(b'T' | b't'))
            && b.get(13) == Some(&b':')
            && b.get(16) == Some(&b':');
        if !separators_ok
            || year == 0
            || !(1..=12).contains(&month)
            || day == 0
            || day > days_in_month(year, month)
            || hour > 23
            || minute > 59
            || second > 59
        {
            return None;
        }

        let mut i = 19;
        let mut nanos: u32 = 0;
        if b.get(i) == Some(&b'.') {
            i += 1;
            let start = i;
            while let Some(d) = b.get(i).filter(|d| d.is_ascii_digit()) {
                if i - start < 9 {
                    nanos = nanos * 10 + u32::from(d - b'0');
                }
                i += 1;
            }
            let count = i - start;
            if count == 0 {
                return None;
            }
            for _ in count..9 {
                nanos *= 10;
            }
        }

        let offset_secs = match b.get(i) {
            Some(b'Z' | b'z') => {
                i += 1;
                0
            }
            Some(sign @ (b'+' | b'-')) => {
                let hours = digits(b, i + 1, 2)?;
                let minutes = digits(b, i + 4, 2)?;
                if b.get(i + 3) != Some(&b':') || hours > 23 || minutes > 59 {
                    return None;
                }
                let secs = i64::from(hours * 3600 + minutes * 60);
                i += 6;
                if *sign == b'-' { -secs } else { secs }
            }
            _ => return None,
        };
        if i != b.len() {
            return None;
        }

        let days = days_from_civil(i64::from(year), month, day);
        let secs =
            days * SECS_PER_DAY + i64::from(hour * 3600 + minute * 60 + second) - offset_secs;
        Some(Self { secs, nanos })
    }
}

impl From<SystemTime> for Timestamp {
    fn from(time: SystemTime) -> Self {
        match time.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(after) => Self {
                secs: i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
                nanos: after.subsec_nanos(),
            },
            Err(before) => {
                let before = before.duration();
                let secs = i64::try_from(before.as_secs()).unwrap_or(i64::MAX);
                match before.subsec_nanos() {
                    0 => Self {
                        secs: -secs,
                        nanos: 0,
                    },
                    n => Self {
                        secs: -secs - 1,
                        nanos: NANOS_PER_SEC - n,
                    },
                }
            }
        }
    }
}

impl Timestamp {
    /// `YYYY-MM-DDTHH:MM:SS` in UTC.
    fn write_date_time(&self, f: &mut impl fmt::Write) -> fmt::Result {
        let days = self.secs.div_euclid(SECS_PER_DAY);
        let secs_of_day = self.secs.rem_euclid(SECS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
            secs_of_day / 3600,
            secs_of_day / 60 % 60,
            secs_of_day % 60
        )
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_date_time(f)?;
        let nanos = self.nanos;
        if nanos == 0 {
        } else if nanos.is_multiple_of(1_000_000) {
            write!(f, ".{:03}", nanos / 1_000_000)?;
        } else if nanos.is_multiple_of(1_000) {
            write!(f, ".{:06}", nanos / 1_000)?;
        } else {
            write!(f, ".{nanos:09}")?;
        }
        f.write_str("Z")
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TimestampVisitor;

        impl Visitor<'_> for TimestampVisitor {
            type Value = Timestamp;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a FHIR instant such as 2024-05-01T12:30:00Z")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Timestamp, E> {
                Timestamp::parse(text)
                    .ok_or_else(|| E::invalid_value(de::Unexpected::Str(text), &self))
            }
        }

        deserializer.deserialize_str(TimestampVisitor)
    }
}

/// The number made of the `len` ASCII digits at `start`.
fn digits(b: &[u8], start: usize, len: usize) -> Option<u32> {
    let slice = b.get(start..start.checked_add(len)?)?;
    slice.iter().try_fold(0u32, |acc, &d| {
        d.is_ascii_digit().then(|| acc * 10 + u32::from(d - b'0'))
    })
}

fn is_leap_year(year: u32) -> bool {
    year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400))
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_from_march = i64::from((month + 9) % 12);
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

// ---------------------------------------------------------------------------
// Resource

/// A FHIR resource as read from an NDJSON line: its type, id and
/// `meta.lastUpdated`, plus the whole JSON text for later use.
///
/// Building one validates the whole line as JSON and copies it once; only
/// `resourceType`, `id` and `meta.lastUpdated` are looked at, and the
/// envelope scan stops as soon as all three have been seen (servers usually
/// write them first). Call [`parse`](Self::parse) to get a richer type.
///
/// ```
/// use fhir_bulk::resource::Resource;
///
/// let line = br#"{"resourceType":"Patient","id":"p-1","meta":{"lastUpdated":"2024-05-01T10:30:00Z"},"gender":"female"}"#;
/// let patient = Resource::from_line(line)?;
/// assert_eq!(patient.resource_type(), "Patient");
/// assert_eq!(patient.id(), Some("p-1"));
/// assert_eq!(patient.last_updated().unwrap().unix_seconds(), 1_714_559_400);
/// assert_eq!(patient.raw().as_bytes(), line);
///
/// #[derive(serde::Deserialize)]
/// struct Patient { gender: String }
/// assert_eq!(patient.parse::<Patient>()?.gender, "female");
/// # Ok::<(), serde_json::Error>(())
/// ```
///
/// `Resource` implements `Deserialize`, but only for serde_json's own
/// deserializers (`from_str`, `from_slice`, `from_reader`), because it keeps
/// the raw JSON text; it serializes as that raw text.
#[derive(Clone)]
pub struct Resource {
    resource_type: String,
    id: Option<String>,
    last_updated: Option<Timestamp>,
    raw: Box<RawValue>,
}

impl Resource {
    /// Parses one NDJSON line (without line terminator; surrounding
    /// whitespace is allowed and not kept). Fails on invalid UTF-8, invalid
    /// JSON, a value that is not an object, a missing or non-string
    /// `resourceType`, a non-string `id`, or a `meta` that is not an object.
    /// An unparseable `meta.lastUpdated` is not an error: it reads as `None`.
    pub fn from_line(line: &[u8]) -> Result<Resource, serde_json::Error> {
        // from_slice validates the UTF-8 of the whole raw value.
        let raw: Box<RawValue> = serde_json::from_slice(line)?;
        Self::from_raw(raw)
    }

    /// Builds a resource from already validated raw JSON.
    pub fn from_raw(raw: Box<RawValue>) -> Result<Resource, serde_json::Error> {
        let envelope = Envelope::scan(raw.get())?;
        let resource_type = envelope
            .resource_type
            .ok_or_else(|| de::Error::missing_field("resourceType"))?
            .into_owned();
        Ok(Resource {
            resource_type,
            id: envelope.id.flatten().map(Cow::into_owned),
            last_updated: envelope.last_updated.as_deref().and_then(Timestamp::parse),
            raw,
        })
    }

    /// The `resourceType`, such as `Patient`.
    pub fn resource_type(&self) -> &str {
        &self.resource_type
    }

    /// The `id`, if any.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// `meta.lastUpdated`, if present and a valid instant.
    pub fn last_updated(&self) -> Option<Timestamp> {
        self.last_updated
    }

    /// The JSON text of the resource, exactly as in the line (minus
    /// surrounding whitespace).
    pub fn raw(&self) -> &str {
        self.raw.get()
    }

    /// The JSON text as a [`RawValue`].
    pub fn raw_value(&self) -> &RawValue {
        &self.raw
    }

    /// Takes the JSON text.
    pub fn into_raw(self) -> Box<RawValue> {
        self.raw
    }

    /// Parses the JSON text into a richer type (a second, full parse).
    pub fn parse<U: DeserializeOwned>(&self) -> Result<U, serde_json::Error> {
        serde_json::from_str(self.raw.get())
    }
}

impl fmt::Debug for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resource")
            .field("resource_type", &self.resource_type)
            .field("id", &self.id)
            .field("last_updated", &self.last_updated)
            .field("raw_len", &self.raw.get().len())
            .finish()
    }
}

impl PartialEq for Resource {
    /// Resources are equal when their JSON texts are identical.
    fn eq(&self, other: &Self) -> bool {
        self.raw.get() == other.raw.get()
    }
}

impl Eq for Resource {}

impl<'de> Deserialize<'de> for Resource {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        Resource::from_raw(raw).map_err(de::Error::custom)
    }
}

impl Serialize for Resource {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.raw.serialize(serializer)
    }
}

/// The fields of a resource that [`Resource`] keeps, borrowed from the text
/// where possible.
#[derive(Default)]
struct Envelope<'de> {
    resource_type: Option<Cow<'de, str>>,
    /// `Some(None)` for `"id": null`.
    id: Option<Option<Cow<'de, str>>>,
    meta_seen: bool,
    last_updated: Option<Cow<'de, str>>,
    /// Set when the scan was cut short on purpose.
    stopped: bool,
}

/// The error message used to cut a scan short; never shown.
const STOP: &str = "scan stopped early";

impl<'de> Envelope<'de> {
    /// Scans an already validated JSON text for the envelope fields,
    /// stopping as soon as all of them have been seen.
    fn scan(json: &'de str) -> Result<Self, serde_json::Error> {
        match Self::scan_common(json) {
            Some(envelope) => Ok(envelope),
            None => Self::scan_serde(json),
        }
    }

    /// The general scan, for any layout.
    fn scan_serde(json: &'de str) -> Result<Self, serde_json::Error> {
        let mut envelope = Envelope::default();
        let mut deserializer = serde_json::Deserializer::from_str(json);
        let result = deserializer.deserialize_map(EnvelopeVisitor { out: &mut envelope });
        match result {
            Err(_) if envelope.stopped => Ok(envelope),
            Err(error) => Err(error),
            Ok(()) => Ok(envelope),
        }
    }
}

/// A cursor over validated JSON text for [`Envelope::scan_common`].
struct Cursor<'de> {
    text: &'de str,
    at: usize,
}

impl<'de> Cursor<'de> {
    fn skip_ws(&mut self) {
        let bytes = self.text.as_bytes();
        while bytes.get(self.at).is_some_and(|b| b.is_ascii_whitespace()) {
            self.at += 1;
        }
    }

    /// Consumes `byte` (after white space) if it is next.
    fn eat(&mut self, byte: u8) -> bool {
        self.skip_ws();
        if self.text.as_bytes().get(self.at) == Some(&byte) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    /// A string without escapes, borrowed; `None` for anything else.
    fn plain_string(&mut self) -> Option<&'de str> {
        if !self.eat(b'"') {
            return None;
        }
        let rest = self.text.get(self.at..)?;
        let end = rest.find(['"', '\\'])?;
        if rest.as_bytes()[end] != b'"' {
            return None;
        }
        self.at += end + 1;
        rest.get(..end)
    }

    /// `"key":` and the key.
    fn key(&mut self) -> Option<&'de str> {
        let key = self.plain_string()?;
        self.eat(b':').then_some(key)
    }
}

impl<'de> Envelope<'de> {
    /// The common layout, read without serde: `resourceType`, `id` and `meta` as the first
    /// keys (any order) with plain strings, `meta` holding plain strings. `None` for anything
    /// else, which the serde scan then reads. The text is already validated JSON.
    fn scan_common(json: &'de str) -> Option<Self> {
        let mut c = Cursor { text: json, at: 0 };
        if !c.eat(b'{') {
            return None;
        }
        let mut out = Envelope::default();
        while !(out.resource_type.is_some() && out.id.is_some() && out.meta_seen) {
            match c.key()? {
                "resourceType" if out.resource_type.is_none() => {
                    out.resource_type = Some(Cow::Borrowed(c.plain_string()?));
                }
                "id" if out.id.is_none() => out.id = Some(Some(Cow::Borrowed(c.plain_string()?))),
                "meta" if !out.meta_seen => {
                    if !c.eat(b'{') {
                        return None;
                    }
                    if !c.eat(b'}') {
                        loop {
                            let key = c.key()?;
                            let value = c.plain_string()?;
                            if key == "lastUpdated" && out.last_updated.is_none() {
                                out.last_updated = Some(Cow::Borrowed(value));
                            }
                            if c.eat(b'}') {
                                break;
                            }
                            if !c.eat(b',') {
                                return None;
                            }
                        }
                    }
                    out.meta_seen = true;
                }
                _ => return None,
            }
            if !c.eat(b',') {
                return None;
            }
        }
        Some(out)
    }
}

struct EnvelopeVisitor<'a, 'de> {
    out: &'a mut Envelope<'de>,
}

impl<'de> Visitor<'de> for EnvelopeVisitor<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a FHIR resource (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let out = self.out;
        while let Some(key) = map.next_key::<EnvelopeKey>()? {
            match key {
                EnvelopeKey::ResourceType if out.resource_type.is_none() => {
                    out.resource_type = Some(map.next_value::<Str<'de>>()?.0);
                }
                EnvelopeKey::Id if out.id.is_none() => {
                    out.id = Some(map.next_value::<Option<Str<'de>>>()?.map(|s| s.0));
                }
                EnvelopeKey::Meta if !out.meta_seen => {
                    let meta = map.next_value::<Option<Meta<'de>>>()?;
                    out.last_updated = meta.and_then(|m| m.last_updated).map(|s| s.0);
                    out.meta_seen = true;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            if out.resource_type.is_some() && out.id.is_some() && out.meta_seen {
                out.stopped = true;
                return Err(de::Error::custom(STOP));
            }
        }
        Ok(())
    }
}

/// The top-level keys the envelope scan cares about.
enum EnvelopeKey {
    ResourceType,
    Id,
    Meta,
    Other,
}

impl<'de> Deserialize<'de> for EnvelopeKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;

        impl Visitor<'_> for KeyVisitor {
            type Value = EnvelopeKey;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }

            fn visit_str<E: de::Error>(self, key: &str) -> Result<EnvelopeKey, E> {
                Ok(match key {
                    "resourceType" => EnvelopeKey::ResourceType,
                    "id" => EnvelopeKey::Id,
                    "meta" => EnvelopeKey::Meta,
                    _ => EnvelopeKey::Other,
                })
            }
        }

        deserializer.deserialize_identifier(KeyVisitor)
    }
}

/// `meta`, reduced to `lastUpdated`.
struct Meta<'a> {
    last_updated: Option<Str<'a>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for Meta<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MetaVisitor<'a>(std::marker::PhantomData<&'a ()>);

        impl<'de: 'a, 'a> Visitor<'de> for MetaVisitor<'a> {
            type Value = Meta<'a>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a meta object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Meta<'a>, A::Error> {
                let mut last_updated = None;
                while let Some(key) = map.next_key::<Str<'de>>()? {
                    if key.0 == "lastUpdated" && last_updated.is_none() {
                        last_updated = map.next_value::<Option<Str<'a>>>()?;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(Meta { last_updated })
            }
        }

        deserializer.deserialize_map(MetaVisitor(std::marker::PhantomData))
    }
}

/// A string borrowed from the input when it has no escapes.
struct Str<'de>(Cow<'de, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StrVisitor<'a>(std::marker::PhantomData<&'a ()>);

        impl<'de: 'a, 'a> Visitor<'de> for StrVisitor<'a> {
            type Value = Str<'a>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Str<'a>, E> {
                Ok(Str(Cow::Borrowed(s)))
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<Str<'a>, E> {
                Ok(Str(Cow::Owned(s.to_owned())))
            }

            fn visit_string<E: de::Error>(self, s: String) -> Result<Str<'a>, E> {
                Ok(Str(Cow::Owned(s)))
            }
        }

        deserializer.deserialize_str(StrVisitor(std::marker::PhantomData))
    }
}

// ---------------------------------------------------------------------------
// resourceType probe and generic parsing

/// Reads the top-level `resourceType` of a JSON object, stopping as soon as
/// it has been found.
///
/// Cost: when `resourceType` is the first key (as servers normally write
/// it), a few dozen bytes are read whatever the line's length, plus one
/// small allocation for the internal stop signal; otherwise the values before
/// it are skipped at serde_json's skipping speed. The rest of the line is
/// not validated. The result borrows from `line` unless the value contains
/// escapes.
///
/// Returns `Ok(None)` for a JSON object without `resourceType`, and an error
/// when the line is not a JSON object, `resourceType` is not a string, or
/// the JSON before it is malformed.
///
/// ```
/// use fhir_bulk::resource::probe_resource_type;
///
/// let line = br#"{"resourceType":"Observation","status":"final"}"#;
/// assert_eq!(probe_resource_type(line)?.as_deref(), Some("Observation"));
/// assert_eq!(probe_resource_type(br#"{"id":"x"}"#)?, None);
/// // Only the part up to resourceType is looked at.
/// assert_eq!(probe_resource_type(br#"{"resourceType":"Patient", oops"#)?.as_deref(), Some("Patient"));
/// assert!(probe_resource_type(b"[1]").is_err());
/// # Ok::<(), serde_json::Error>(())
/// ```
pub fn probe_resource_type(line: &[u8]) -> Result<Option<Cow<'_, str>>, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_slice(line);
    probe(&mut deserializer)
}

fn probe_str(text: &str) -> Result<Option<Cow<'_, str>>, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    probe(&mut deserializer)
}

fn probe<'de, R: serde_json::de::Read<'de>>(
    deserializer: &mut serde_json::Deserializer<R>,
) -> Result<Option<Cow<'de, str>>, serde_json::Error> {
    let mut found = None;
    match deserializer.deserialize_map(ProbeVisitor { found: &mut found }) {
        Err(_) if found.is_some() => Ok(found),
        Err(error) => Err(error),
        Ok(()) => {
            deserializer.end()?;
            Ok(None)
        }
    }
}

struct ProbeVisitor<'a, 'de> {
    found: &'a mut Option<Cow<'de, str>>,
}

impl<'de> Visitor<'de> for ProbeVisitor<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a FHIR resource (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<EnvelopeKey>()? {
            if let EnvelopeKey::ResourceType = key {
                *self.found = Some(map.next_value::<Str<'de>>()?.0);
                return Err(de::Error::custom(STOP));
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }
}

/// Checks that a line is one whole JSON object, valid UTF-8 throughout, with nothing after
/// the object but white space, and returns its top-level `resourceType` (`None` when it has
/// none).
///
/// This is the integrity check every downloaded line passes before it is counted or saved. It
/// builds no values: one validating scan reads the object to its end, eight bytes at a time
/// through string contents, and a line with a byte of 0x80 or more then gets a UTF-8 check
/// over the whole of it (SIMD-accelerated; a skipping JSON parser would not check the strings
/// it skips; an ASCII line is UTF-8 as it is). Containers may nest
/// 127 deep, serde_json's limit for typed parsing. A bad line is explained by serde_json's
/// message (what is wrong, and the column).
///
/// ```
/// use fhir_bulk::resource::{check_line, ParseError};
///
/// let line = br#"{"id":"x","resourceType":"Patient","name":[{"given":["Ann"]}]}"#;
/// assert_eq!(check_line(line)?.as_deref(), Some("Patient"));
/// // A cut line, two objects, trailing garbage, a raw NUL in a string, not an object:
/// for bad in [&br#"{"resourceType":"Pat"#[..], br#"{"a":1}{"b":2}"#, br#"{"a":1} x"#,
///             b"{\"a\":\"\0\"}", b"[1]"] {
///     assert!(check_line(bad).is_err());
/// }
/// assert!(matches!(check_line(b"{\"a\":\"\xff\"}"), Err(ParseError::InvalidUtf8(_))));
/// # Ok::<(), ParseError>(())
/// ```
pub fn check_line(line: &[u8]) -> Result<Option<Cow<'_, str>>, ParseError> {
    match scan_utf8(line)? {
        line_check::Scan::Valid(None) => Ok(None),
        line_check::Scan::Valid(Some(span)) => {
            // The value with its quotes: a slice of valid UTF-8 at ASCII bytes.
            let quoted = utf8(&line[span.start - 1..=span.end])?;
            if !span.escaped {
                return Ok(Some(Cow::Borrowed(&quoted[1..quoted.len() - 1])));
            }
            // Decoded (and its escapes validated) as the serde check does; on an error the
            // serde check explains the line.
            match serde_json::from_str::<String>(quoted) {
                Ok(decoded) => Ok(Some(Cow::Owned(decoded))),
                Err(_) => check_line_serde(utf8(line)?),
            }
        }
        line_check::Scan::TooDeep => Err(too_deep(utf8(line)?)),
        // serde_json's check has the last word on a refused line and explains it.
        line_check::Scan::Invalid => check_line_serde(utf8(line)?),
    }
}

/// Whether `line` passes [`check_line`] with `expected` as its top-level `resourceType`,
/// decided without building the type when the line writes it without escapes (as servers
/// do): the per-line test of a download that knows its files' types. `false` means "ask
/// [`check_line`]", for the type it has or what is wrong with it.
pub(crate) fn is_valid_of_type(line: &[u8], expected: &str) -> bool {
    matches!(scan_utf8(line), Ok(line_check::Scan::Valid(Some(span)))
        if !span.escaped && &line[span.start..span.end] == expected.as_bytes())
}

/// The scan of [`check_line`], and the UTF-8 check of the line (its error) unless the scan
/// accepted it as ASCII, so UTF-8 as it is: only other lines get a UTF-8 pass (an invalid
/// line gets one, for serde_json's explanation).
fn scan_utf8(line: &[u8]) -> Result<line_check::Scan, ParseError> {
    let (scan, ascii) = line_check::scan_with_ascii(line);
    if !(ascii && matches!(scan, line_check::Scan::Valid(_))) {
        utf8(line)?;
    }
    Ok(scan)
}

/// UTF-8 of a whole line: the SIMD check, and the standard library's error (with where)
/// when it fails.
fn utf8(line: &[u8]) -> Result<&str, ParseError> {
    match simdutf8::basic::from_utf8(line) {
        Ok(text) => Ok(text),
        Err(_) => std::str::from_utf8(line).map_err(ParseError::InvalidUtf8),
    }
}

/// The error for a line nested deeper than the limit: serde_json's own, from a typed parse
/// (which has the limit).
fn too_deep(text: &str) -> ParseError {
    match serde_json::from_str::<serde_json::Value>(text) {
        Err(error) => error.into(),
        Ok(_) => ParseError::from(<serde_json::Error as de::Error>::custom(format!(
            "nested deeper than {} levels",
            line_check::MAX_DEPTH
        ))),
    }
}

/// The serde_json form of [`check_line`]'s scan (after the UTF-8 check): the reference the
/// fast scan is tested against, and what explains a refused line.
fn check_line_serde(text: &str) -> Result<Option<Cow<'_, str>>, ParseError> {
    check_object_start(text)?;
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let mut found = None;
    deserializer.deserialize_map(CheckVisitor { found: &mut found })?;
    deserializer.end()?;
    Ok(found)
}

/// The first byte after white space must open an object; for anything else, the parser's
/// own message when the text is not JSON at all, [`ParseError::NotAnObject`] when it is.
fn check_object_start(text: &str) -> Result<(), ParseError> {
    if text.bytes().find(|b| !b.is_ascii_whitespace()) == Some(b'{') {
        return Ok(());
    }
    serde_json::from_str::<IgnoredAny>(text)?;
    Err(ParseError::NotAnObject)
}

struct CheckVisitor<'a, 'de> {
    found: &'a mut Option<Cow<'de, str>>,
}

impl<'de> Visitor<'de> for CheckVisitor<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a FHIR resource (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<EnvelopeKey>()? {
            match key {
                EnvelopeKey::ResourceType if self.found.is_none() => {
                    *self.found = Some(map.next_value::<Str<'de>>()?.0);
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// Parses one NDJSON line into `T`, first checking that its `resourceType`
/// is `expected_type` when one is given.
///
/// The whole line is checked to be UTF-8 first (serde_json does not check
/// strings it skips), so a line with invalid UTF-8 anywhere is rejected
/// whatever `T` is; the line must be one JSON object with nothing after it but
/// white space ([`ParseError::NotAnObject`] otherwise), so it is validated to
/// its end even when `T` reads only a few fields. The type check uses [`probe_resource_type`], which
/// normally costs next to nothing next to the full parse; the full parse is
/// skipped when the type does not match.
///
/// ```
/// use fhir_bulk::resource::{parse_line, ParseError, Resource};
///
/// let line = br#"{"resourceType":"Patient","id":"p-1"}"#;
/// let patient: Resource = parse_line(line, Some("Patient"))?;
/// assert_eq!(patient.id(), Some("p-1"));
///
/// let value: serde_json::Value = parse_line(line, None)?;
/// assert_eq!(value["id"], "p-1");
///
/// let error = parse_line::<Resource>(line, Some("Observation")).unwrap_err();
/// assert!(matches!(error, ParseError::UnexpectedResourceType { .. }));
/// assert_eq!(error.to_string(), r#"expected resourceType "Observation", found "Patient""#);
/// # Ok::<(), ParseError>(())
/// ```
pub fn parse_line<T: DeserializeOwned + 'static>(
    line: &[u8],
    expected_type: Option<&str>,
) -> Result<T, ParseError> {
    // `Resource` knows its type once parsed (and its parse checks the UTF-8): one parse
    // instead of a UTF-8 pass, a probe and a parse.
    if TypeId::of::<T>() == TypeId::of::<Resource>() {
        let resource = Resource::from_line(line)?;
        if let Some(expected) = expected_type
            && resource.resource_type() != expected
        {
            return Err(ParseError::UnexpectedResourceType {
                expected: expected.to_owned(),
                found: Some(resource.resource_type().to_owned()),
            });
        }
        let any: Box<dyn Any> = Box::new(resource);
        if let Ok(typed) = any.downcast::<T>() {
            return Ok(*typed);
        }
        // Unreachable (the type ids are equal); the general path below is still correct.
    }
    let text = std::str::from_utf8(line).map_err(ParseError::InvalidUtf8)?;
    check_object_start(text)?;
    if let Some(expected) = expected_type {
        let found = probe_str(text)?;
        if found.as_deref() != Some(expected) {
            return Err(ParseError::UnexpectedResourceType {
                expected: expected.to_owned(),
                found: found.map(Cow::into_owned),
            });
        }
    }
    Ok(serde_json::from_str(text)?)
}

// ---------------------------------------------------------------------------
// Deleted resources

/// A resource reported as deleted in a bulk export's `deleted` file.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeletedResource {
    /// The resource type, such as `Patient`.
    pub resource_type: String,
    /// The resource id.
    pub id: String,
}

impl DeletedResource {
    /// A deleted `resource_type/id`.
    pub fn new(resource_type: impl Into<String>, id: impl Into<String>) -> DeletedResource {
        DeletedResource {
            resource_type: resource_type.into(),
            id: id.into(),
        }
    }
}

impl fmt::Display for DeletedResource {
    /// `Patient/123`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.resource_type, self.id)
    }
}

/// Reads one line of a `deleted` file: a `Bundle` (of type `transaction`)
/// whose entries carry `request: {"method": "DELETE", "url": "Patient/123"}`.
///
/// The `url` may be relative (`Patient/123`), absolute
/// (`https://example.org/fhir/Patient/123`) or versioned
/// (`Patient/123/_history/2`); a query string or fragment is ignored.
/// Entries whose method is not `DELETE` are skipped, as is the Bundle's
/// `type`. A `DELETE` entry whose URL does not end in a resource type and id
/// is an error ([`ParseError::InvalidReference`]), as is a line that is not a
/// `Bundle`.
///
/// ```
/// use fhir_bulk::resource::{deleted_resources, DeletedResource};
///
/// let line = br#"{"resourceType":"Bundle","type":"transaction","entry":[
///     {"request":{"method":"DELETE","url":"Patient/123"}},
///     {"request":{"method":"DELETE","url":"https://x/fhir/Observation/o-9/_history/2"}}]}"#;
/// let deleted = deleted_resources(line)?;
/// assert_eq!(deleted[0].to_string(), "Patient/123");
/// assert_eq!(deleted[1], DeletedResource::new("Observation", "o-9"));
/// # Ok::<(), fhir_bulk::resource::ParseError>(())
/// ```
pub fn deleted_resources(line: &[u8]) -> Result<Vec<DeletedResource>, ParseError> {
    let bundle: DeletedBundle = parse_line(line, Some("Bundle"))?;
    let mut deleted = Vec::new();
    for entry in bundle.entry {
        let Some(request) = entry.request else {
            continue;
        };
        let is_delete = request
            .method
            .as_deref()
            .is_some_and(|m| m.eq_ignore_ascii_case("DELETE"));
        if !is_delete {
            continue;
        }
        let url = request.url.unwrap_or_default();
        match type_and_id(&url) {
            Some((resource_type, id)) => deleted.push(DeletedResource {
                resource_type: resource_type.to_owned(),
                id: id.to_owned(),
            }),
            None => return Err(ParseError::InvalidReference(url)),
        }
    }
    Ok(deleted)
}

#[derive(Deserialize)]
struct DeletedBundle {
    #[serde(default)]
    entry: Vec<DeletedEntry>,
}

#[derive(Deserialize)]
struct DeletedEntry {
    #[serde(default)]
    request: Option<EntryRequest>,
}

#[derive(Deserialize)]
struct EntryRequest {
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    url: Option<String>,
}

/// Takes `(type, id)` from `Type/id`, `base/Type/id` or
/// `[base/]Type/id/_history/version`, ignoring a query or fragment.
fn type_and_id(url: &str) -> Option<(&str, &str)> {
    let path = url.split(['?', '#']).next().unwrap_or_default();
    let segments = path.split('/').filter(|s| !s.is_empty());
    let mut previous = None;
    let mut last = None;
    for segment in segments {
        if segment == "_history" {
            break;
        }
        previous = last;
        last = Some(segment);
    }
    let (resource_type, id) = (previous?, last?);
    let type_ok = resource_type
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_uppercase())
        && resource_type.chars().all(|c| c.is_ascii_alphanumeric());
    let id_ok = id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    (type_ok && id_ok).then_some((resource_type, id))
}

// ---------------------------------------------------------------------------
// organizeOutputBy block headers

/// Recognises the header line that starts each resource block of an export
/// requested with `organizeOutputBy`, and returns the reference it carries:
///
/// ```
/// use fhir_bulk::resource::block_header_reference;
///
/// let header = br#"{"resourceType":"Parameters","parameter":[{"name":"header","valueReference":{"reference":"Patient/p-1"}}]}"#;
/// assert_eq!(block_header_reference(header).as_deref(), Some("Patient/p-1"));
/// assert_eq!(block_header_reference(br#"{"resourceType":"Patient","id":"p-1"}"#), None);
/// ```
///
/// Returns `None` for anything else, including `Parameters` without a
/// `header` parameter and malformed lines. Lines of other resource types
/// cost one [`probe_resource_type`].
pub fn block_header_reference(line: &[u8]) -> Option<String> {
    if probe_resource_type(line).ok()?.as_deref() != Some("Parameters") {
        return None;
    }
    let parameters: HeaderParameters<'_> = serde_json::from_slice(line).ok()?;
    parameters.parameter.into_iter().find_map(|p| {
        if p.name?.0 != "header" {
            return None;
        }
        Some(p.value_reference?.reference?.0.into_owned())
    })
}

#[derive(Deserialize)]
struct HeaderParameters<'a> {
    #[serde(default, borrow)]
    parameter: Vec<HeaderParameter<'a>>,
}

#[derive(Deserialize)]
struct HeaderParameter<'a> {
    #[serde(default, borrow)]
    name: Option<Str<'a>>,
    #[serde(rename = "valueReference", default, borrow)]
    value_reference: Option<Reference<'a>>,
}

#[derive(Deserialize)]
struct Reference<'a> {
    #[serde(default, borrow)]
    reference: Option<Str<'a>>,
}

mod line_check;

#[cfg(test)]
mod tests;
