//! Deterministic synthetic FHIR R4 data, generated on the fly.
//!
//! Every line of every file is a pure function of the dataset seed and the
//! position of the line, so a file can be regenerated (for example to serve a
//! `Range` request) without ever being stored. The length of each resource
//! line is chosen *before* the resource is generated (a cheap hash of its
//! index) and the resource's XHTML narrative is padded to exactly that length.
//! This is what lets the server know a file's byte length, and skip to an
//! arbitrary byte offset, without generating the lines in front of it.

use std::fmt::{self, Write as _};
use std::sync::Arc;

use super::config::Config;

/// Writes formatted text into a `String` (which cannot fail).
macro_rules! w {
    ($out:expr, $($arg:tt)*) => {{
        let _ = write!($out, $($arg)*);
    }};
}

/// The resource types the generator knows how to synthesise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Patient,
    Observation,
    Condition,
    Encounter,
    DocumentReference,
    DiagnosticReport,
}

impl Kind {
    pub(crate) const ALL: [Kind; 6] = [
        Kind::Patient,
        Kind::Observation,
        Kind::Condition,
        Kind::Encounter,
        Kind::DocumentReference,
        Kind::DiagnosticReport,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Patient => "Patient",
            Kind::Observation => "Observation",
            Kind::Condition => "Condition",
            Kind::Encounter => "Encounter",
            Kind::DocumentReference => "DocumentReference",
            Kind::DiagnosticReport => "DiagnosticReport",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    fn salt(self) -> u64 {
        match self {
            Kind::Patient => 0x5041_5449_454e_5431,
            Kind::Observation => 0x4f42_5345_5256_4154,
            Kind::Condition => 0x434f_4e44_4954_494f,
            Kind::Encounter => 0x454e_434f_554e_5445,
            Kind::DocumentReference => 0x444f_4352_4546_4552,
            Kind::DiagnosticReport => 0x4449_4147_5245_504f,
        }
    }

    fn id_prefix(self) -> &'static str {
        match self {
            Kind::Patient => "p",
            Kind::Observation => "obs",
            Kind::Condition => "cond",
            Kind::Encounter => "enc",
            Kind::DocumentReference => "doc",
            Kind::DiagnosticReport => "rep",
        }
    }

    /// Every line of this kind is at least this long. It must stay above the
    /// longest resource the generator can produce without narrative filler
    /// (checked by a unit test).
    fn min_len(self) -> u64 {
        match self {
            Kind::Patient => 660,
            Kind::Observation => 730,
            Kind::Condition => 730,
            Kind::Encounter => 640,
            Kind::DocumentReference => 1000,
            Kind::DiagnosticReport => 1000,
        }
    }

    pub(crate) fn default_per_patient(self) -> u64 {
        match self {
            Kind::Patient => 1,
            Kind::Observation => 8,
            Kind::Condition => 2,
            Kind::Encounter => 3,
            Kind::DocumentReference => 2,
            Kind::DiagnosticReport => 1,
        }
    }
}

/// Lines are `min_len .. min_len + LEN_SPAN` bytes long (newline excluded).
const LEN_SPAN: u64 = 320;

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// The splitmix64 finaliser: a good 64-bit mixing function.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A tiny splitmix64 generator: deterministic, no dependency needed.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(mix(seed))
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        mix(self.0)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        // `items` is always one of the non-empty tables below.
        let i = self.below(items.len() as u64) as usize;
        &items[i.min(items.len().saturating_sub(1))]
    }
}

/// The length (without newline) of resource `index` of `kind`.
fn resource_len(seed: u64, kind: Kind, index: u64) -> u64 {
    let h = mix(mix(seed ^ kind.salt()).wrapping_add(index.wrapping_mul(GOLDEN)));
    kind.min_len() + h % LEN_SPAN
}

fn resource_rng(seed: u64, kind: Kind, index: u64) -> Rng {
    Rng::new(mix(seed.wrapping_add(kind.salt()).rotate_left(17)) ^ index.wrapping_mul(GOLDEN))
}

fn digits(mut n: u64) -> u64 {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

// ---------------------------------------------------------------------------
// Dates and times

/// Days since 1970-01-01 to (year, month, day); proleptic Gregorian calendar.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A FHIR `date` (`YYYY-MM-DD`), from days since the Unix epoch.
struct Date(i64);

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = civil_from_days(self.0);
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

/// A FHIR `dateTime` with seconds precision, from seconds since the epoch.
struct DateTime(i64);

impl fmt::Display for DateTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.rem_euclid(86_400);
        write!(
            f,
            "{}T{:02}:{:02}:{:02}Z",
            Date(self.0.div_euclid(86_400)),
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        )
    }
}

/// A FHIR `instant` with milliseconds, from milliseconds since the epoch.
pub(crate) struct Instant(pub(crate) i64);

impl fmt::Display for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.div_euclid(1000);
        let millis = self.0.rem_euclid(1000);
        let s = DateTime(secs).to_string();
        // Insert the milliseconds before the trailing `Z`.
        write!(f, "{}.{millis:03}Z", s.trim_end_matches('Z'))
    }
}

/// 2024-01-01T00:00:00Z
const EPOCH_2024: i64 = 1_704_067_200;
/// 2015-01-01T00:00:00Z
const EPOCH_2015: i64 = 1_420_070_400;
/// 1930-01-01 in days since the epoch.
const DAYS_1930: i64 = -14_610;

fn last_updated(rng: &mut Rng) -> Instant {
    let ms = rng.below(366 * 86_400 * 1000) as i64;
    Instant(EPOCH_2024 * 1000 + ms)
}

fn clinical_time(rng: &mut Rng) -> i64 {
    EPOCH_2015 + rng.below(9 * 365 * 86_400) as i64
}

// ---------------------------------------------------------------------------
// Vocabulary

const FAMILY: &[&str] = &[
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Gonzalez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Perez",
    "Thompson",
    "White",
    "Nguyen",
    "Okafor",
    "Schmidt",
    "Kowalski",
];
const MALE: &[&str] = &[
    "James", "Robert", "John", "Michael", "David", "William", "Richard", "Joseph", "Thomas",
    "Carlos", "Daniel", "Ahmed", "Kenji", "Luca",
];
const FEMALE: &[&str] = &[
    "Mary",
    "Patricia",
    "Jennifer",
    "Linda",
    "Elizabeth",
    "Barbara",
    "Susan",
    "Jessica",
    "Sarah",
    "Maria",
    "Aisha",
    "Mei",
    "Sofia",
    "Ingrid",
];
const STREETS: &[&str] = &[
    "Main St",
    "Oak Ave",
    "Maple Dr",
    "Cedar Ln",
    "Elm St",
    "Washington Blvd",
    "Lakeview Rd",
    "Hillcrest Ct",
    "Park Pl",
    "River Rd",
];
const CITIES: &[(&str, &str)] = &[
    ("Springfield", "MA"),
    ("Boston", "MA"),
    ("Worcester", "MA"),
    ("Hartford", "CT"),
    ("Providence", "RI"),
    ("Burlington", "VT"),
    ("Portland", "ME"),
    ("Albany", "NY"),
];

struct ObsCode {
    code: &'static str,
    display: &'static str,
    unit: &'static str,
    ucum: &'static str,
    /// Value range in tenths.
    min: u64,
    max: u64,
    lab: bool,
}

const OBSERVATIONS: &[ObsCode] = &[
    ObsCode {
        code: "8867-4",
        display: "Heart rate",
        unit: "beats/minute",
        ucum: "/min",
        min: 550,
        max: 1100,
        lab: false,
    },
    ObsCode {
        code: "9279-1",
        display: "Respiratory rate",
        unit: "breaths/minute",
        ucum: "/min",
        min: 120,
        max: 240,
        lab: false,
    },
    ObsCode {
        code: "8310-5",
        display: "Body temperature",
        unit: "degrees C",
        ucum: "Cel",
        min: 360,
        max: 392,
        lab: false,
    },
    ObsCode {
        code: "29463-7",
        display: "Body weight",
        unit: "kg",
        ucum: "kg",
        min: 450,
        max: 1300,
        lab: false,
    },
    ObsCode {
        code: "8302-2",
        display: "Body height",
        unit: "cm",
        ucum: "cm",
        min: 1480,
        max: 1980,
        lab: false,
    },
    ObsCode {
        code: "8480-6",
        display: "Systolic blood pressure",
        unit: "mmHg",
        ucum: "mm[Hg]",
        min: 1000,
        max: 1650,
        lab: false,
    },
    ObsCode {
        code: "8462-4",
        display: "Diastolic blood pressure",
        unit: "mmHg",
        ucum: "mm[Hg]",
        min: 600,
        max: 1000,
        lab: false,
    },
    ObsCode {
        code: "2339-0",
        display: "Glucose [Mass/volume] in Blood",
        unit: "mg/dL",
        ucum: "mg/dL",
        min: 700,
        max: 1800,
        lab: true,
    },
    ObsCode {
        code: "2093-3",
        display: "Cholesterol [Mass/volume] in Serum or Plasma",
        unit: "mg/dL",
        ucum: "mg/dL",
        min: 1200,
        max: 2800,
        lab: true,
    },
    ObsCode {
        code: "718-7",
        display: "Hemoglobin [Mass/volume] in Blood",
        unit: "g/dL",
        ucum: "g/dL",
        min: 110,
        max: 175,
        lab: true,
    },
    ObsCode {
        code: "4548-4",
        display: "Hemoglobin A1c/Hemoglobin.total in Blood",
        unit: "%",
        ucum: "%",
        min: 45,
        max: 95,
        lab: true,
    },
];

const CONDITIONS: &[(&str, &str)] = &[
    ("44054006", "Diabetes mellitus type 2"),
    ("38341003", "Hypertensive disorder, systemic arterial"),
    ("195967001", "Asthma"),
    ("13645005", "Chronic obstructive lung disease"),
    ("35489007", "Depressive disorder"),
    ("55822004", "Hyperlipidemia"),
    ("162864005", "Body mass index 30+ - obesity"),
    ("40055000", "Chronic sinusitis"),
    ("10509002", "Acute bronchitis"),
    ("444814009", "Viral sinusitis"),
];

const ENCOUNTER_CLASSES: &[(&str, &str)] = &[
    ("AMB", "ambulatory"),
    ("EMER", "emergency"),
    ("IMP", "inpatient encounter"),
];

const ENCOUNTER_TYPES: &[(&str, &str)] = &[
    ("185349003", "Encounter for check up"),
    ("50849002", "Emergency room admission"),
    ("185345009", "Encounter for symptom"),
    ("410620009", "Well child visit"),
    ("183452005", "Emergency hospital admission"),
];

/// Narrative filler: plain ASCII words that need no JSON or XHTML escaping.
const WORDS: &[&str] = &[
    "patient",
    "reports",
    "no",
    "acute",
    "distress",
    "follow-up",
    "scheduled",
    "vitals",
    "stable",
    "history",
    "reviewed",
    "medication",
    "reconciled",
    "labs",
    "pending",
    "plan",
    "discussed",
    "with",
    "family",
    "continue",
    "current",
    "therapy",
    "return",
    "if",
    "symptoms",
    "worsen.",
    "denies",
    "chest",
    "pain,",
    "fever",
    "or",
    "shortness",
    "of",
    "breath.",
    "alert",
    "and",
    "oriented.",
    "advised",
    "diet",
    "exercise",
    "counselling",
    "provided.",
];

const XHTML_OPEN: &str = r#"<div xmlns=\"http://www.w3.org/1999/xhtml\">"#;

/// Inserts narrative filler at byte `at` so that the line that started at
/// byte `start` of `out` ends up exactly `len` bytes long.
fn pad(out: &mut String, rng: &mut Rng, start: usize, at: usize, len: u64) {
    let current = (out.len() - start) as u64;
    // `current <= len` always holds (see the `natural_length_fits_the_budget`
    // unit test), so the line ends up exactly `len` bytes long.
    let want = len.saturating_sub(current) as usize;
    if want == 0 {
        return;
    }
    let mut filler = String::with_capacity(want + 16);
    while filler.len() < want {
        if !filler.is_empty() {
            filler.push(' ');
        }
        let word: &&str = rng.pick(WORDS);
        filler.push_str(word);
    }
    filler.truncate(want);
    out.insert_str(at, &filler);
}

fn write_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => w!(out, "\\u{:04x}", c as u32),
            c => out.push(c),
        }
    }
    out.push('"');
}

// ---------------------------------------------------------------------------
// Resources

fn write_head(out: &mut String, kind: Kind, index: u64, rng: &mut Rng) {
    w!(
        out,
        r#"{{"resourceType":"{}","id":"{}-{}","meta":{{"lastUpdated":"{}"}},"text":{{"status":"generated","div":"{XHTML_OPEN}"#,
        kind.name(),
        kind.id_prefix(),
        index + 1,
        last_updated(rng)
    );
}

const DIV_CLOSE: &str = r#"</div>"},"#;

fn write_patient(out: &mut String, rng: &mut Rng, index: u64, len: u64) {
    let start = out.len();
    write_head(out, Kind::Patient, index, rng);
    let male = rng.below(2) == 0;
    let given = if male {
        rng.pick(MALE)
    } else {
        rng.pick(FEMALE)
    };
    let family = rng.pick(FAMILY);
    let gender = if male { "male" } else { "female" };
    let birth = Date(DAYS_1930 + rng.below(85 * 365) as i64);
    w!(out, "{given} {family}, {gender}, born {birth}. ");
    let at = out.len();
    let (city, state) = rng.pick(CITIES);
    w!(
        out,
        r#"{DIV_CLOSE}"identifier":[{{"use":"usual","system":"http://hospital.example.org/mrn","value":"MRN{:08}"}}],"active":true,"name":[{{"use":"official","family":"{family}","given":["{given}"]}}],"telecom":[{{"system":"phone","value":"555-{:03}-{:04}","use":"home"}}],"gender":"{gender}","birthDate":"{birth}","address":[{{"use":"home","line":["{} {}"],"city":"{city}","state":"{state}","postalCode":"{:05}","country":"US"}}]}}"#,
        mix(index) % 100_000_000,
        200 + rng.below(800),
        rng.below(10_000),
        1 + rng.below(9999),
        rng.pick(STREETS),
        1000 + rng.below(99_000),
    );
    pad(out, rng, start, at, len);
}

fn write_observation(out: &mut String, rng: &mut Rng, index: u64, patient: u64, len: u64) {
    let start = out.len();
    write_head(out, Kind::Observation, index, rng);
    let obs = rng.pick(OBSERVATIONS);
    let tenths = obs.min + rng.below(obs.max - obs.min + 1);
    let value = format!("{}.{}", tenths / 10, tenths % 10);
    let when = DateTime(clinical_time(rng));
    w!(out, "{}: {value} {} on {when}. ", obs.display, obs.unit);
    let at = out.len();
    let cat = if obs.lab { "laboratory" } else { "vital-signs" };
    w!(
        out,
        r#"{DIV_CLOSE}"status":"final","category":[{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"{cat}"}}]}}],"code":{{"coding":[{{"system":"http://loinc.org","code":"{}","display":"{}"}}]}},"subject":{{"reference":"Patient/p-{}"}},"effectiveDateTime":"{when}","valueQuantity":{{"value":{value},"unit":"{}","system":"http://unitsofmeasure.org","code":"{}"}}}}"#,
        obs.code,
        obs.display,
        patient + 1,
        obs.unit,
        obs.ucum,
    );
    pad(out, rng, start, at, len);
}

fn write_condition(out: &mut String, rng: &mut Rng, index: u64, patient: u64, len: u64) {
    let start = out.len();
    write_head(out, Kind::Condition, index, rng);
    let (code, display) = rng.pick(CONDITIONS);
    let onset = clinical_time(rng).div_euclid(86_400);
    let recorded = Date(onset + rng.below(30) as i64);
    let onset = Date(onset);
    let clinical = if rng.below(4) == 0 {
        "resolved"
    } else {
        "active"
    };
    w!(out, "{display}, onset {onset}. ");
    let at = out.len();
    w!(
        out,
        r#"{DIV_CLOSE}"clinicalStatus":{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/condition-clinical","code":"{clinical}"}}]}},"category":[{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/condition-category","code":"problem-list-item"}}]}}],"code":{{"coding":[{{"system":"http://snomed.info/sct","code":"{code}","display":"{display}"}}]}},"subject":{{"reference":"Patient/p-{}"}},"onsetDateTime":"{onset}","recordedDate":"{recorded}"}}"#,
        patient + 1,
    );
    pad(out, rng, start, at, len);
}

fn write_encounter(out: &mut String, rng: &mut Rng, index: u64, patient: u64, len: u64) {
    let start = out.len();
    write_head(out, Kind::Encounter, index, rng);
    let (class, class_display) = rng.pick(ENCOUNTER_CLASSES);
    let (code, display) = rng.pick(ENCOUNTER_TYPES);
    let begin = clinical_time(rng);
    let end = begin
        + 600
        + rng.below(if *class == "IMP" {
            5 * 86_400
        } else {
            4 * 3600
        }) as i64;
    let (begin, end) = (DateTime(begin), DateTime(end));
    w!(out, "{display}, {class_display}, {begin}. ");
    let at = out.len();
    w!(
        out,
        r#"{DIV_CLOSE}"status":"finished","class":{{"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":"{class}","display":"{class_display}"}},"type":[{{"coding":[{{"system":"http://snomed.info/sct","code":"{code}","display":"{display}"}}]}}],"subject":{{"reference":"Patient/p-{}"}},"period":{{"start":"{begin}","end":"{end}"}}}}"#,
        patient + 1,
    );
    pad(out, rng, start, at, len);
}

/// The `Attachment` of resource `index` of `kind` (see the `attachments` module).
fn write_attachment(out: &mut String, seed: u64, kind: Kind, index: u64, base: &str) {
    let Some((info, _)) = super::attachments::binary_of(seed, kind, index) else {
        return;
    };
    let url = if info.absolute {
        format!("{base}Binary/{}", info.id)
    } else {
        format!("Binary/{}", info.id)
    };
    w!(
        out,
        r#"{{"contentType":"{}","url":"{url}","size":{},"hash":"{}","title":"{} of {}"}}"#,
        info.content_type,
        info.size,
        info.hash,
        if info.is_large() {
            "Scanned document"
        } else {
            "Note"
        },
        info.resource
    );
}

#[allow(clippy::too_many_arguments)]
fn write_document_reference(
    out: &mut String,
    rng: &mut Rng,
    seed: u64,
    index: u64,
    patient: u64,
    len: u64,
    base: &str,
) {
    let start = out.len();
    write_head(out, Kind::DocumentReference, index, rng);
    let when = DateTime(clinical_time(rng));
    w!(out, "Clinical document of {when}. ");
    let at = out.len();
    w!(
        out,
        r#"{DIV_CLOSE}"status":"current","type":{{"coding":[{{"system":"http://loinc.org","code":"11506-3","display":"Progress note"}}]}},"subject":{{"reference":"Patient/p-{}"}},"date":"{when}","content":[{{"attachment":"#,
        patient + 1,
    );
    write_attachment(out, seed, Kind::DocumentReference, index, base);
    out.push_str("}]}");
    pad(out, rng, start, at, len);
}

#[allow(clippy::too_many_arguments)]
fn write_diagnostic_report(
    out: &mut String,
    rng: &mut Rng,
    seed: u64,
    index: u64,
    patient: u64,
    len: u64,
    base: &str,
) {
    let start = out.len();
    write_head(out, Kind::DiagnosticReport, index, rng);
    let when = DateTime(clinical_time(rng));
    w!(out, "Laboratory report of {when}. ");
    let at = out.len();
    w!(
        out,
        r#"{DIV_CLOSE}"status":"final","code":{{"coding":[{{"system":"http://loinc.org","code":"11502-2","display":"Laboratory report"}}]}},"subject":{{"reference":"Patient/p-{}"}},"effectiveDateTime":"{when}","presentedForm":["#,
        patient + 1,
    );
    write_attachment(out, seed, Kind::DiagnosticReport, index, base);
    out.push_str("]}");
    pad(out, rng, start, at, len);
}

// ---------------------------------------------------------------------------
// Other line kinds

const HEADER_PREFIX: &str = r#"{"resourceType":"Parameters","parameter":[{"name":"header","valueReference":{"reference":"Patient/p-"#;
const HEADER_SUFFIX: &str = r#""}}]}"#;

fn write_header(out: &mut String, patient: u64) {
    w!(out, "{HEADER_PREFIX}{}{HEADER_SUFFIX}", patient + 1);
}

fn header_len(patient: u64) -> u64 {
    (HEADER_PREFIX.len() + HEADER_SUFFIX.len()) as u64 + digits(patient + 1)
}

const ERROR_ISSUES: &[(&str, &str)] = &[
    (
        "processing",
        "failed validation and was not exported: Observation.valueQuantity.unit is missing",
    ),
    (
        "not-found",
        "references Practitioner/pr-17 which was not found; the reference was kept",
    ),
    (
        "exception",
        "could not be read from the data store before the export deadline",
    ),
    (
        "too-costly",
        "has more than 10000 contained resources and was skipped",
    ),
];

fn write_error(out: &mut String, seed: u64, n: u64, severity: &str, types: &[Kind]) {
    let kind = types
        .get((n % types.len().max(1) as u64) as usize)
        .copied()
        .unwrap_or(Kind::Observation);
    let (code, msg) = ERROR_ISSUES[(n % ERROR_ISSUES.len() as u64) as usize];
    w!(
        out,
        r#"{{"resourceType":"OperationOutcome","id":"err-{}","issue":[{{"severity":"#,
        n + 1
    );
    write_json_str(out, severity);
    w!(
        out,
        r#","code":"{code}","diagnostics":"{}/{}-{} {msg}"}}]}}"#,
        kind.name(),
        kind.id_prefix(),
        1 + mix(seed ^ n) % 1000,
    );
}

fn write_deleted(out: &mut String, n: u64, types: &[Kind]) {
    let kind = types
        .get((n % types.len().max(1) as u64) as usize)
        .copied()
        .unwrap_or(Kind::Patient);
    w!(
        out,
        r#"{{"resourceType":"Bundle","id":"del-{}","type":"transaction","entry":[{{"request":{{"method":"DELETE","url":"{}/{}-deleted-{}"}}}}]}}"#,
        n + 1,
        kind.name(),
        kind.id_prefix(),
        n + 1
    );
}

// ---------------------------------------------------------------------------
// Dataset

#[derive(Debug)]
pub(crate) struct TypeData {
    pub(crate) kind: Kind,
    pub(crate) per_patient: u64,
    /// Number of resources of this type in a per-type export.
    pub(crate) count: u64,
    /// Set when the type is exported as one big file of at least this size.
    pub(crate) target_bytes: Option<u64>,
}

#[derive(Debug)]
struct Inner {
    seed: u64,
    patients: u64,
    types: Vec<TypeData>,
    max_per_file: Option<u64>,
    /// The FHIR base (absolute attachment URLs start with it).
    base: String,
}

/// The synthetic data a [`TestServer`](super::TestServer) exports.
///
/// Everything is generated on demand from a seed: two servers built with the
/// same configuration serve byte-identical files. Use it to compute what a
/// client *should* have received, e.g. [`Dataset::type_file_lines`].
#[derive(Clone, Debug)]
pub struct Dataset {
    inner: Arc<Inner>,
}

/// Describes one line without generating it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum LineRef {
    Resource {
        kind: Kind,
        index: u64,
        patient: u64,
    },
    Header {
        patient: u64,
    },
    Error {
        n: u64,
    },
    Deleted {
        n: u64,
    },
}

/// The content of one served file, in terms of the dataset.
#[derive(Clone, Debug)]
pub(crate) enum Content {
    /// Resources `start..end` of type number `ty`.
    Type { ty: usize, start: u64, end: u64 },
    /// Positions `start..end` of the patient-organised sequence over `types`.
    Organized {
        types: Arc<[usize]>,
        start: u64,
        end: u64,
    },
    /// One OperationOutcome per severity.
    Errors {
        severities: Arc<[String]>,
        types: Arc<[Kind]>,
    },
    /// `count` deletion Bundles.
    Deleted { count: u64, types: Arc<[Kind]> },
}

impl Dataset {
    pub(crate) fn new(config: &Config, base: &str) -> std::io::Result<Dataset> {
        let invalid = |msg: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, msg);
        if config.max_resources_per_file == Some(0) {
            return Err(invalid("max_resources_per_file must be at least 1".into()));
        }
        let mut types: Vec<TypeData> = Vec::new();
        let mut names = config.resource_types.clone();
        let mut per_patient_config = config.per_patient.clone();
        if let Some(n) = config.attachments {
            for name in ["DocumentReference", "DiagnosticReport"] {
                if !names.iter().any(|t| t == name) {
                    names.push(name.to_owned());
                }
            }
            per_patient_config.insert(0, ("DocumentReference".to_owned(), n));
        }
        for name in &names {
            let kind = Kind::from_name(name).ok_or_else(|| {
                invalid(format!(
                    "the test server cannot generate {name:?} resources; supported: Patient, Observation, Condition, Encounter, DocumentReference, DiagnosticReport"
                ))
            })?;
            if types.iter().any(|t| t.kind == kind) {
                continue;
            }
            let per_patient = if kind == Kind::Patient {
                1
            } else {
                per_patient_config
                    .iter()
                    .rev()
                    .find(|(n, _)| n == name)
                    .map_or(kind.default_per_patient(), |(_, c)| *c)
            };
            types.push(TypeData {
                kind,
                per_patient,
                count: config.patients.saturating_mul(per_patient),
                target_bytes: None,
            });
        }
        for (name, target) in &config.file_bytes {
            let Some(t) = types.iter_mut().find(|t| t.kind.name() == name) else {
                return Err(invalid(format!(
                    "file_bytes({name:?}, ..): {name} is not one of the exported resource types"
                )));
            };
            let mut total = 0u64;
            let mut count = 0u64;
            while total < *target {
                total += resource_len(config.seed, t.kind, count) + 1;
                count += 1;
            }
            t.count = count;
            t.target_bytes = Some(*target);
        }
        Ok(Dataset {
            inner: Arc::new(Inner {
                seed: config.seed,
                patients: config.patients,
                types,
                max_per_file: config.max_resources_per_file,
                base: base.to_owned(),
            }),
        })
    }

    /// Number of patients in the dataset.
    pub fn patients(&self) -> u64 {
        self.inner.patients
    }

    /// The resource types this dataset exports, in export order.
    pub fn resource_types(&self) -> impl Iterator<Item = &str> + '_ {
        self.inner.types.iter().map(|t| t.kind.name())
    }

    /// Number of resources of `resource_type` in a per-type export
    /// (0 for a type that is not exported).
    pub fn resource_count(&self, resource_type: &str) -> u64 {
        self.type_index(resource_type)
            .map_or(0, |i| self.inner.types[i].count)
    }

    /// Number of files `resource_type` is split into in a per-type export:
    /// `Type.1.ndjson` to `Type.N.ndjson`.
    pub fn type_file_count(&self, resource_type: &str) -> u64 {
        self.type_index(resource_type)
            .map_or(0, |i| self.type_ranges(i).len() as u64)
    }

    /// The exact lines (without the trailing newline) of the file
    /// `{resource_type}.{file_number}.ndjson` of a per-type export
    /// (`file_number` starts at 1). These files are the same in every job.
    pub fn type_file_lines(&self, resource_type: &str, file_number: u64) -> Option<Lines> {
        let ty = self.type_index(resource_type)?;
        let index = usize::try_from(file_number.checked_sub(1)?).ok()?;
        let (start, end) = *self.type_ranges(ty).get(index)?;
        Some(self.lines(&Content::Type { ty, start, end }))
    }

    /// Every line of every file of `resource_type`, in order.
    pub fn all_lines(&self, resource_type: &str) -> Option<Lines> {
        let ty = self.type_index(resource_type)?;
        Some(self.lines(&Content::Type {
            ty,
            start: 0,
            end: self.inner.types[ty].count,
        }))
    }

    /// The attachments the `DocumentReference` and `DiagnosticReport` resources point at,
    /// in resource order (see
    /// [`TestServerBuilder::attachments`](super::TestServerBuilder::attachments)).
    pub fn binaries(&self) -> Vec<super::BinaryInfo> {
        let mut out = Vec::new();
        for t in &self.inner.types {
            for index in 0..t.count {
                if let Some((info, _)) =
                    super::attachments::binary_of(self.inner.seed, t.kind, index)
                {
                    out.push(info);
                }
            }
        }
        out
    }

    /// The content of `Binary/{id}` (e.g. `b-doc-1`), as served raw.
    pub fn binary_content(&self, id: &str) -> Option<Vec<u8>> {
        self.binaries().into_iter().find(|b| b.id == id)?;
        let (kind, n) = if let Some(n) = id.strip_prefix("b-doc-") {
            (Kind::DocumentReference, n)
        } else {
            (Kind::DiagnosticReport, id.strip_prefix("b-rep-")?)
        };
        let index = n.parse::<u64>().ok()?.checked_sub(1)?;
        super::attachments::binary_of(self.inner.seed, kind, index).map(|(_, bytes)| bytes)
    }

    pub(crate) fn seed(&self) -> u64 {
        self.inner.seed
    }

    pub(crate) fn max_per_file(&self) -> Option<u64> {
        self.inner.max_per_file
    }

    pub(crate) fn types(&self) -> &[TypeData] {
        &self.inner.types
    }

    pub(crate) fn type_index(&self, name: &str) -> Option<usize> {
        self.inner.types.iter().position(|t| t.kind.name() == name)
    }

    /// Resource index ranges of the files of type number `ty`.
    pub(crate) fn type_ranges(&self, ty: usize) -> Vec<(u64, u64)> {
        let Some(t) = self.inner.types.get(ty) else {
            return Vec::new();
        };
        let per_file = if t.target_bytes.is_some() {
            t.count
        } else {
            self.inner.max_per_file.unwrap_or(t.count)
        };
        chunk_ranges(t.count, per_file)
    }

    /// Resources per patient block when organising by patient over `types`.
    pub(crate) fn block_size(&self, types: &[usize]) -> u64 {
        types
            .iter()
            .filter_map(|&t| self.inner.types.get(t))
            .map(|t| t.per_patient)
            .sum()
    }

    fn patient_of(&self, t: &TypeData, index: u64) -> u64 {
        if t.kind == Kind::Patient {
            index
        } else if t.target_bytes.is_some() {
            index % self.inner.patients.max(1)
        } else {
            index / t.per_patient.max(1)
        }
    }

    /// The lines of a file with the given content.
    pub(crate) fn lines(&self, content: &Content) -> Lines {
        let state = match content {
            Content::Type { ty, start, end } => State::Type {
                ty: *ty,
                next: *start,
                end: *end,
            },
            Content::Organized { types, start, end } => State::Organized {
                types: types.clone(),
                block: self.block_size(types),
                next: *start,
                end: *end,
                header_due: start < end,
            },
            Content::Errors { severities, types } => State::Errors {
                severities: severities.clone(),
                types: types.clone(),
                next: 0,
            },
            Content::Deleted { count, types } => State::Deleted {
                types: types.clone(),
                next: 0,
                end: *count,
            },
        };
        Lines {
            ds: self.clone(),
            state,
        }
    }

    /// Length of a line, without its newline. Cheap for resources and headers.
    fn line_len(&self, line: &LineRef, state: &State) -> u64 {
        match *line {
            LineRef::Resource { kind, index, .. } => resource_len(self.inner.seed, kind, index),
            LineRef::Header { patient } => header_len(patient),
            LineRef::Error { .. } | LineRef::Deleted { .. } => {
                let mut s = String::new();
                self.write_line(line, state, &mut s);
                s.len() as u64
            }
        }
    }

    fn write_line(&self, line: &LineRef, state: &State, out: &mut String) {
        let seed = self.inner.seed;
        match *line {
            LineRef::Resource {
                kind,
                index,
                patient,
            } => {
                let len = resource_len(seed, kind, index);
                let mut rng = resource_rng(seed, kind, index);
                out.reserve(len as usize + 1);
                match kind {
                    Kind::Patient => write_patient(out, &mut rng, index, len),
                    Kind::Observation => write_observation(out, &mut rng, index, patient, len),
                    Kind::Condition => write_condition(out, &mut rng, index, patient, len),
                    Kind::Encounter => write_encounter(out, &mut rng, index, patient, len),
                    Kind::DocumentReference => write_document_reference(
                        out,
                        &mut rng,
                        seed,
                        index,
                        patient,
                        len,
                        &self.inner.base,
                    ),
                    Kind::DiagnosticReport => write_diagnostic_report(
                        out,
                        &mut rng,
                        seed,
                        index,
                        patient,
                        len,
                        &self.inner.base,
                    ),
                }
            }
            LineRef::Header { patient } => write_header(out, patient),
            LineRef::Error { n } => {
                if let State::Errors {
                    severities, types, ..
                } = state
                {
                    let severity = severities.get(n as usize).map_or("error", String::as_str);
                    write_error(out, seed, n, severity, types);
                }
            }
            LineRef::Deleted { n } => {
                if let State::Deleted { types, .. } = state {
                    write_deleted(out, n, types);
                }
            }
        }
    }
}

pub(crate) fn chunk_ranges(count: u64, per_file: u64) -> Vec<(u64, u64)> {
    let per_file = per_file.max(1);
    let mut ranges = Vec::new();
    let mut start = 0;
    while start < count {
        let end = count.min(start.saturating_add(per_file));
        ranges.push((start, end));
        start = end;
    }
    ranges
}

#[derive(Clone, Debug)]
enum State {
    Type {
        ty: usize,
        next: u64,
        end: u64,
    },
    Organized {
        types: Arc<[usize]>,
        block: u64,
        next: u64,
        end: u64,
        header_due: bool,
    },
    Errors {
        severities: Arc<[String]>,
        types: Arc<[Kind]>,
        next: u64,
    },
    Deleted {
        types: Arc<[Kind]>,
        next: u64,
        end: u64,
    },
}

/// The lines of one served file, generated lazily.
///
/// Each item is one NDJSON line without its trailing `\n`; the served file is
/// every line followed by `\n`. Obtain one from
/// [`TestServer::file_lines`](super::TestServer::file_lines) or
/// [`Dataset::type_file_lines`].
#[derive(Clone, Debug)]
pub struct Lines {
    ds: Dataset,
    state: State,
}

impl Lines {
    /// Describes the next line and moves past it.
    fn next_ref(&mut self) -> Option<LineRef> {
        match &mut self.state {
            State::Type { ty, next, end } => {
                if *next >= *end {
                    return None;
                }
                let t = self.ds.inner.types.get(*ty)?;
                let index = *next;
                *next += 1;
                Some(LineRef::Resource {
                    kind: t.kind,
                    index,
                    patient: self.ds.patient_of(t, index),
                })
            }
            State::Organized {
                types,
                block,
                next,
                end,
                header_due,
            } => {
                if *next >= *end || *block == 0 {
                    return None;
                }
                let patient = *next / *block;
                if *header_due {
                    *header_due = false;
                    return Some(LineRef::Header { patient });
                }
                let mut k = *next % *block;
                *next += 1;
                *header_due = *next < *end && *next % *block == 0;
                for &ty in types.iter() {
                    let t = self.ds.inner.types.get(ty)?;
                    if k < t.per_patient {
                        return Some(LineRef::Resource {
                            kind: t.kind,
                            index: patient * t.per_patient + k,
                            patient,
                        });
                    }
                    k -= t.per_patient;
                }
                None
            }
            State::Errors {
                severities, next, ..
            } => {
                if *next >= severities.len() as u64 {
                    return None;
                }
                *next += 1;
                Some(LineRef::Error { n: *next - 1 })
            }
            State::Deleted { next, end, .. } => {
                if *next >= *end {
                    return None;
                }
                *next += 1;
                Some(LineRef::Deleted { n: *next - 1 })
            }
        }
    }

    /// Appends the next line (without newline) to `out`; false at the end.
    pub(crate) fn write_next(&mut self, out: &mut String) -> bool {
        match self.next_ref() {
            Some(line) => {
                self.ds.write_line(&line, &self.state, out);
                true
            }
            None => false,
        }
    }

    /// Skips whole lines (each counted with its newline) while they fit in
    /// `bytes`; returns how many bytes of the next line remain to be skipped.
    pub(crate) fn skip_bytes(&mut self, mut bytes: u64) -> u64 {
        loop {
            let saved = self.state.clone();
            let Some(line) = self.next_ref() else {
                return 0;
            };
            let len = self.ds.line_len(&line, &self.state) + 1;
            if len > bytes {
                self.state = saved;
                return bytes;
            }
            bytes -= len;
        }
    }

    /// Total bytes of the remaining lines, newlines included, and their count.
    pub(crate) fn measure(mut self) -> (u64, u64) {
        let (mut bytes, mut count) = (0, 0);
        while let Some(line) = self.next_ref() {
            bytes += self.ds.line_len(&line, &self.state) + 1;
            count += 1;
        }
        (bytes, count)
    }
}

impl Iterator for Lines {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        let mut out = String::new();
        self.write_next(&mut out).then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar() {
        assert_eq!(Date(0).to_string(), "1970-01-01");
        assert_eq!(Date(DAYS_1930).to_string(), "1930-01-01");
        assert_eq!(DateTime(EPOCH_2024).to_string(), "2024-01-01T00:00:00Z");
        assert_eq!(DateTime(EPOCH_2015).to_string(), "2015-01-01T00:00:00Z");
        assert_eq!(
            Instant(951_782_400_123).to_string(),
            "2000-02-29T00:00:00.123Z"
        );
    }

    /// The narrative filler can only lengthen a line: the longest possible
    /// resource without filler must fit in the shortest line of its kind.
    #[test]
    fn natural_length_fits_the_budget() {
        for kind in Kind::ALL {
            let mut longest = 0;
            for seed in 0..4u64 {
                // Ids of up to 10 digits: more than 10^10 resources is not a test.
                // Attachments hash their content: fewer of them.
                let (low, high) = match kind {
                    Kind::DocumentReference | Kind::DiagnosticReport => (40, 9_999_999_960),
                    _ => (3000, 9_999_997_000),
                };
                for index in (0..low).chain(high..9_999_999_999) {
                    let mut out = String::new();
                    let mut rng = resource_rng(seed, kind, index);
                    // len 0: no filler at all
                    match kind {
                        Kind::Patient => write_patient(&mut out, &mut rng, index, 0),
                        Kind::Observation => write_observation(&mut out, &mut rng, index, index, 0),
                        Kind::Condition => write_condition(&mut out, &mut rng, index, index, 0),
                        Kind::Encounter => write_encounter(&mut out, &mut rng, index, index, 0),
                        Kind::DocumentReference => write_document_reference(
                            &mut out,
                            &mut rng,
                            seed,
                            index,
                            index,
                            0,
                            "http://127.0.0.1:65535/fhir/",
                        ),
                        Kind::DiagnosticReport => write_diagnostic_report(
                            &mut out,
                            &mut rng,
                            seed,
                            index,
                            index,
                            0,
                            "http://127.0.0.1:65535/fhir/",
                        ),
                    }
                    longest = longest.max(out.len() as u64);
                }
            }
            assert!(
                longest <= kind.min_len(),
                "{kind:?}: natural {longest} > {}",
                kind.min_len()
            );
        }
    }
}
