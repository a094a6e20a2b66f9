use super::*;
use proptest::prelude::*;
use serde_json::{Value, json};

fn resource(line: &str) -> Resource {
    Resource::from_line(line.as_bytes()).expect("a resource")
}

/// A realistic Observation of about 1 KB, as a server would write it.
const OBSERVATION: &str = concat!(
    r#"{"resourceType":"Observation","id":"obs-000123","meta":{"versionId":"3","lastUpdated":"2024-03-10T08:15:30.250+01:00","#,
    r#""source":"#,
    r#""urn:uuid:5b0b8f7e-2c1a-4b8e-9d5e-3f1f0c2b9a77","profile":["http://hl7.org/fhir/us/core/StructureDefinition/us-core-vital-signs"]},"#,
    r#""status":"final","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","#,
    r#""code":"vital-signs","display":"Vital Signs"}],"text":"Vital Signs"}],"code":{"coding":[{"system":"http://loinc.org","#,
    r#""code":"85354-9","display":"Blood pressure panel with all children optional"}],"text":"Blood pressure"},"#,
    r#""subject":{"reference":"Patient/pat-42","display":"Ana Mar\u00eda L\u00f3pez"},"encounter":{"reference":"Encounter/enc-7"},"#,
    r#""effectiveDateTime":"2024-03-10T08:10:00+01:00","issued":"2024-03-10T08:15:30.250+01:00","#,
    r#""performer":[{"reference":"Practitioner/prac-3"}],"note":[{"text":"Patient seated, left arm. \"Cuff\" size: adult."}],"#,
    r#""component":[{"code":{"coding":[{"system":"http://loinc.org","code":"8480-6","display":"Systolic blood pressure"}]},"#,
    r#""valueQuantity":{"value":128,"unit":"mmHg","system":"http://unitsofmeasure.org","code":"mm[Hg]"}},"#,
    r#"{"code":{"coding":[{"system":"http://loinc.org","code":"8462-4","display":"Diastolic blood pressure"}]},"#,
    r#""valueQuantity":{"value":82.5,"unit":"mmHg","system":"http://unitsofmeasure.org","code":"mm[Hg]"}}],"#,
    r#""interpretation":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation","code":"N"}]}]}"#,
);

#[test]
fn observation_raw_is_byte_identical() {
    assert!(OBSERVATION.len() > 1000, "{}", OBSERVATION.len());
    let mut line = OBSERVATION.as_bytes().to_vec();
    line.extend_from_slice(b"\r\n");
    let framed: Vec<_> = crate::ndjson::LineFramer::new()
        .into_lines(line)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(framed.len(), 1);
    let observation = Resource::from_line(&framed[0]).unwrap();
    assert_eq!(observation.raw(), OBSERVATION);
    assert_eq!(observation.resource_type(), "Observation");
    assert_eq!(observation.id(), Some("obs-000123"));
    assert_eq!(
        observation.last_updated(),
        Timestamp::parse("2024-03-10T07:15:30.250Z")
    );
    let value: Value = observation.parse().unwrap();
    assert_eq!(value["subject"]["display"], "Ana María López");
    assert_eq!(observation.clone().into_raw().get(), OBSERVATION);
    // Serializing writes the raw text back.
    assert_eq!(serde_json::to_string(&observation).unwrap(), OBSERVATION);
}

#[test]
fn envelope_fields() {
    let r = resource(
        r#"{"resourceType":"Patient","id":"p-1","meta":{"lastUpdated":"2024-05-01T10:30:00Z"},"active":true}"#,
    );
    assert_eq!(r.resource_type(), "Patient");
    assert_eq!(r.id(), Some("p-1"));
    assert_eq!(r.last_updated().unwrap().unix_seconds(), 1_714_559_400);
}

#[test]
fn extra_whitespace() {
    let line = " \t{ \"resourceType\" : \"Patient\" ,\n \"id\" :\"p-1\" , \"meta\" : { \"lastUpdated\" : \"2024-05-01T10:30:00Z\" } }  \r";
    let r = resource(line);
    assert_eq!(r.resource_type(), "Patient");
    assert_eq!(r.id(), Some("p-1"));
    assert!(r.last_updated().is_some());
    // The raw text is the object itself, without the surrounding whitespace.
    assert_eq!(r.raw(), line.trim());
}

#[test]
fn nested_meta_and_field_order() {
    // meta comes first and has other fields; a contained resource has its
    // own resourceType, id and meta, which must not be picked up.
    let r = resource(
        r#"{"meta":{"versionId":"2","tag":[{"system":"s","code":"c"}],"lastUpdated":"2023-01-02T03:04:05Z","security":[]},
            "contained":[{"resourceType":"Organization","id":"org","meta":{"lastUpdated":"2000-01-01T00:00:00Z"}}],
            "text":{"div":"<div>{\"id\":\"fake\"}</div>"},
            "resourceType":"Observation","status":"final","id":"o-1"}"#,
    );
    assert_eq!(r.resource_type(), "Observation");
    assert_eq!(r.id(), Some("o-1"));
    assert_eq!(r.last_updated(), Timestamp::parse("2023-01-02T03:04:05Z"));
}

#[test]
fn missing_or_null_optional_fields() {
    let r = resource(r#"{"resourceType":"Patient"}"#);
    assert_eq!((r.id(), r.last_updated()), (None, None));
    let r = resource(r#"{"resourceType":"Patient","id":null,"meta":null}"#);
    assert_eq!((r.id(), r.last_updated()), (None, None));
    let r = resource(r#"{"resourceType":"Patient","meta":{"versionId":"1"}}"#);
    assert_eq!(r.last_updated(), None);
    // An invalid lastUpdated is not an error.
    let r = resource(r#"{"resourceType":"Patient","meta":{"lastUpdated":"yesterday"}}"#);
    assert_eq!(r.last_updated(), None);
}

#[test]
fn unicode_escapes() {
    let line = r#"{"resourceType":"Pati\u0065nt","id":"p\u00e9-\ud83d\ude00","meta":{"lastUpdated":"2024-05-01T10:30:00\u005a"},"name":[{"text":"Jos\u00e9 \"Pepe\""}]}"#;
    let r = resource(line);
    assert_eq!(r.resource_type(), "Patient");
    assert_eq!(r.id(), Some("pé-😀"));
    assert!(r.last_updated().is_some());
    assert_eq!(r.raw(), line);
    // Raw UTF-8 works too.
    let r = resource(r#"{"resourceType":"Patient","id":"pé"}"#);
    assert_eq!(r.id(), Some("pé"));
}

#[test]
fn duplicate_keys_first_wins() {
    let r = resource(r#"{"resourceType":"Patient","id":"a","resourceType":"Group","id":"b"}"#);
    assert_eq!((r.resource_type(), r.id()), ("Patient", Some("a")));
}

#[test]
fn rejected_lines() {
    for line in [
        &b""[..],
        b"   ",
        b"{",
        b"[]",
        b"\"Patient\"",
        b"null",
        br#"{"id":"x"}"#,
        br#"{"resourceType":1}"#,
        br#"{"resourceType":null}"#,
        br#"{"resourceType":"Patient","id":3}"#,
        br#"{"resourceType":"Patient","meta":[]}"#,
        br#"{"resourceType":"Patient","meta":{"lastUpdated":5}}"#,
        br#"{"resourceType":"Patient"} {}"#,
        br#"{"resourceType":"Patient",}"#,
        br#"{"resourceType":"Patient","id":"a","meta":{},"x":}"#,
        b"\xEF\xBB\xBF{\"resourceType\":\"Patient\"}",
        // Invalid UTF-8 inside a string nobody looks at.
        b"{\"resourceType\":\"Patient\",\"id\":\"a\",\"meta\":{},\"text\":\"\xFF\"}",
        b"{\"resourceType\":\"Patient\",\"id\":\"a\xC3\"}",
    ] {
        assert!(
            Resource::from_line(line).is_err(),
            "{}",
            String::from_utf8_lossy(line)
        );
    }
    let error = Resource::from_line(br#"{"id":"x"}"#).unwrap_err();
    assert!(error.to_string().contains("resourceType"), "{error}");
}

#[test]
fn deserialize_inside_other_json() {
    let json = r#"[{"resourceType":"Patient","id":"1"}, {"resourceType":"Group","id":"2","meta":{"lastUpdated":"2024-01-01T00:00:00Z"}}]"#;
    let resources: Vec<Resource> = serde_json::from_str(json).unwrap();
    assert_eq!(resources[0].raw(), r#"{"resourceType":"Patient","id":"1"}"#);
    assert_eq!(resources[1].id(), Some("2"));
    assert_eq!(
        serde_json::to_string(&resources).unwrap(),
        json.replace(", ", ",")
    );
    assert!(serde_json::from_str::<Vec<Resource>>(r#"[{"id":"1"}]"#).is_err());
    assert_eq!(resources[0], resources[0].clone());
    assert_ne!(resources[0], resources[1]);
    assert!(format!("{:?}", resources[0]).contains("Patient"));
}

#[test]
fn probe_finds_resource_type_anywhere_at_top_level() {
    let probe =
        |line: &str| probe_resource_type(line.as_bytes()).map(|found| found.map(Cow::into_owned));
    assert_eq!(
        probe(r#"{"resourceType":"Patient"}"#).unwrap().as_deref(),
        Some("Patient")
    );
    assert_eq!(
        probe(
            r#"{"id":"1","contained":[{"resourceType":"Organization"}],"resourceType":"Patient"}"#
        )
        .unwrap()
        .as_deref(),
        Some("Patient")
    );
    assert_eq!(
        probe(r#" { "resourceType" : "Pati\u0065nt" "#)
            .unwrap()
            .as_deref(),
        Some("Patient")
    );
    assert_eq!(probe(r#"{"id":"1"}"#).unwrap(), None);
    assert_eq!(probe("{}").unwrap(), None);
    assert!(probe(r#"{"id":"1"} x"#).is_err());
    assert!(probe(r#"{"id":"1""#).is_err());
    assert!(probe(r#"{"resourceType":7}"#).is_err());
    assert!(probe("[]").is_err());
    assert!(probe("").is_err());
    // The value borrows from the line when it can.
    let line = br#"{"resourceType":"Patient"}"#;
    assert!(matches!(
        probe_resource_type(line).unwrap(),
        Some(Cow::Borrowed("Patient"))
    ));
}

#[derive(Debug, Deserialize, PartialEq)]
struct MiniPatient {
    id: String,
}

#[test]
fn parse_line_into_any_type() {
    let line = br#"{"resourceType":"Patient","id":"p-1","gender":"female"}"#;
    assert_eq!(
        parse_line::<MiniPatient>(line, Some("Patient")).unwrap(),
        MiniPatient { id: "p-1".into() }
    );
    assert_eq!(
        parse_line::<MiniPatient>(line, None).unwrap(),
        MiniPatient { id: "p-1".into() }
    );
    let value: Value = parse_line(line, Some("Patient")).unwrap();
    assert_eq!(value["gender"], "female");
    let r: Resource = parse_line(line, Some("Patient")).unwrap();
    assert_eq!(r.raw().as_bytes(), line);
}

#[test]
fn parse_line_checks_the_resource_type() {
    let line = br#"{"resourceType":"Observation","id":"o-1"}"#;
    match parse_line::<Resource>(line, Some("Patient")) {
        Err(ParseError::UnexpectedResourceType { expected, found }) => {
            assert_eq!(expected, "Patient");
            assert_eq!(found.as_deref(), Some("Observation"));
        }
        other => panic!("{other:?}"),
    }
    let error = parse_line::<Value>(br#"{"id":"o-1"}"#, Some("Patient")).unwrap_err();
    assert!(matches!(
        &error,
        ParseError::UnexpectedResourceType { found: None, .. }
    ));
    assert_eq!(
        error.to_string(),
        r#"expected resourceType "Patient", found none"#
    );
    // Case matters.
    assert!(parse_line::<Value>(br#"{"resourceType":"patient"}"#, Some("Patient")).is_err());
}

#[test]
fn parse_line_errors() {
    // Invalid UTF-8 in a string the target type skips.
    let line = b"{\"resourceType\":\"Patient\",\"id\":\"p\",\"x\":\"\xFF\"}";
    let error = parse_line::<MiniPatient>(line, None).unwrap_err();
    assert!(matches!(error, ParseError::InvalidUtf8(_)), "{error:?}");
    assert!(error.to_string().starts_with("invalid UTF-8"), "{error}");

    let error = parse_line::<MiniPatient>(b"{\"resourceType\":\"Patient\"", None).unwrap_err();
    assert!(matches!(error, ParseError::Json(_)), "{error:?}");
    let error =
        parse_line::<MiniPatient>(b"{\"resourceType\":\"Patient\"}", Some("Patient")).unwrap_err();
    assert!(error.to_string().contains("missing field `id`"), "{error}");
    // A broken line whose resourceType looks right still fails.
    assert!(parse_line::<Value>(br#"{"resourceType":"Patient", oops}"#, Some("Patient")).is_err());
}

#[test]
fn deleted_bundle() {
    let line = json!({
        "resourceType": "Bundle",
        "id": "deleted-1",
        "type": "transaction",
        "entry": [
            {"request": {"method": "DELETE", "url": "Patient/123"}},
            {"fullUrl": "x", "request": {"method": "DELETE", "url": "https://example.org/fhir/R4/Observation/o-1"}},
            {"request": {"method": "DELETE", "url": "Condition/c.2/_history/7"}},
            {"request": {"method": "DELETE", "url": "http://x/fhir/Encounter/e-1/_history/2?_format=json"}},
            {"request": {"method": "delete", "url": "Patient/456/"}},
            {"request": {"method": "POST", "url": "Patient"}},
            {"request": {"method": "PUT", "url": "Patient/789"}},
            {"request": {"method": "GET", "url": "Patient/790"}},
            {"resource": {"resourceType": "Patient", "id": "791"}},
            {"request": {"url": "Patient/792"}}
        ]
    })
    .to_string();
    let deleted = deleted_resources(line.as_bytes()).unwrap();
    let names: Vec<String> = deleted.iter().map(ToString::to_string).collect();
    assert_eq!(
        names,
        [
            "Patient/123",
            "Observation/o-1",
            "Condition/c.2",
            "Encounter/e-1",
            "Patient/456"
        ]
    );
    assert_eq!(
        deleted[0],
        DeletedResource {
            resource_type: "Patient".into(),
            id: "123".into()
        }
    );
}

#[test]
fn deleted_bundle_edge_cases() {
    assert!(
        deleted_resources(br#"{"resourceType":"Bundle","type":"transaction"}"#)
            .unwrap()
            .is_empty()
    );
    assert!(
        deleted_resources(br#"{"resourceType":"Bundle","type":"transaction","entry":[]}"#)
            .unwrap()
            .is_empty()
    );
    // Not a Bundle.
    assert!(matches!(
        deleted_resources(br#"{"resourceType":"Patient","id":"1"}"#),
        Err(ParseError::UnexpectedResourceType { .. })
    ));
    assert!(deleted_resources(b"not json").is_err());
    // DELETE entries whose URL names no resource.
    for url in [
        "Patient",
        "",
        "Patient?identifier=x|1",
        "/123",
        "_history/2",
        "patient/1",
        "Patient/a b",
    ] {
        let line = json!({"resourceType": "Bundle", "entry": [{"request": {"method": "DELETE", "url": url}}]})
            .to_string();
        match deleted_resources(line.as_bytes()) {
            Err(ParseError::InvalidReference(found)) => assert_eq!(found, url),
            other => panic!("{url}: {other:?}"),
        }
    }
    let line = br#"{"resourceType":"Bundle","entry":[{"request":{"method":"DELETE"}}]}"#;
    assert!(matches!(
        deleted_resources(line),
        Err(ParseError::InvalidReference(_))
    ));
}

#[test]
fn block_headers() {
    // The example from the specification, with its spacing.
    let line = br#"  {"resourceType": "Parameters", "parameter": [{"name": "header", "valueReference": {"reference": "Patient/p-1"}}]}"#;
    assert_eq!(block_header_reference(line).as_deref(), Some("Patient/p-1"));
    let line = br#"{"parameter":[{"name":"other","valueString":"x"},{"valueReference":{"reference":"Group/g"},"name":"header"}],"resourceType":"Parameters"}"#;
    assert_eq!(block_header_reference(line).as_deref(), Some("Group/g"));

    for line in [
        &br#"{"resourceType":"Patient","id":"p-1"}"#[..],
        br#"{"resourceType":"Parameters"}"#,
        br#"{"resourceType":"Parameters","parameter":[]}"#,
        br#"{"resourceType":"Parameters","parameter":[{"name":"header"}]}"#,
        br#"{"resourceType":"Parameters","parameter":[{"name":"header","valueReference":{"display":"x"}}]}"#,
        br#"{"resourceType":"Parameters","parameter":[{"name":"other","valueReference":{"reference":"Patient/1"}}]}"#,
        br#"{"resourceType":"Parameters","parameter":[{"name":"header","valueReference":{"reference":"Patient/1"}}]"#,
        br#"{"resourceType":"Parameters","parameter":{"name":"header"}}"#,
        b"",
        b"\xFF",
    ] {
        assert_eq!(
            block_header_reference(line),
            None,
            "{}",
            String::from_utf8_lossy(line)
        );
    }
}

#[test]
fn timestamps() {
    let cases = [
        ("1970-01-01T00:00:00Z", 0, 0),
        ("2024-01-01T00:00:00Z", 1_704_067_200, 0),
        ("2000-03-01T00:00:00Z", 951_868_800, 0),
        ("2024-02-29T12:00:00Z", 1_709_208_000, 0),
        ("2024-05-01T12:30:00.5+02:00", 1_714_559_400, 500_000_000),
        (
            "2024-05-01t08:30:00.123456789-02:00",
            1_714_559_400,
            123_456_789,
        ),
        (
            "2024-05-01T10:30:00.1234567891z",
            1_714_559_400,
            123_456_789,
        ),
        ("1969-12-31T23:59:59.999Z", -1, 999_000_000),
        ("0001-01-01T00:00:00Z", -62_135_596_800, 0),
        ("9999-12-31T23:59:59Z", 253_402_300_799, 0),
    ];
    for (text, secs, nanos) in cases {
        let t = Timestamp::parse(text).unwrap_or_else(|| panic!("{text}"));
        assert_eq!(
            (t.unix_seconds(), t.subsec_nanos()),
            (secs, nanos),
            "{text}"
        );
        assert_eq!(Timestamp::parse(&t.to_string()), Some(t), "{text}");
    }
    assert_eq!(
        Timestamp::parse("2024-05-01T12:30:00.5+02:00")
            .unwrap()
            .to_string(),
        "2024-05-01T10:30:00.500Z"
    );
    assert_eq!(Timestamp::UNIX_EPOCH.to_string(), "1970-01-01T00:00:00Z");
    assert_eq!(
        Timestamp::from_unix(-1, 1_000).unwrap().to_string(),
        "1969-12-31T23:59:59.000001Z"
    );
    assert_eq!(
        Timestamp::from_unix(0, 1).unwrap().to_string(),
        "1970-01-01T00:00:00.000000001Z"
    );
    assert_eq!(Timestamp::from_unix(0, 1_000_000_000), None);

    for bad in [
        "",
        "2024",
        "2024-05-01",
        "2024-05-01T10:30Z",
        "2024-05-01T10:30:00",
        "2024-05-01 10:30:00Z",
        "2024-05-01T10:30:00.Z",
        "2024-05-01T10:30:00+0200",
        "2024-05-01T10:30:00+02",
        "2024-05-01T10:30:00+24:00",
        "2024-05-01T10:30:00Zx",
        "2024-13-01T10:30:00Z",
        "2024-00-01T10:30:00Z",
        "2023-02-29T10:30:00Z",
        "1900-02-29T10:30:00Z",
        "2024-04-31T10:30:00Z",
        "2024-05-01T24:00:00Z",
        "2024-05-01T10:60:00Z",
        "2024-05-01T10:30:60Z",
        "0000-01-01T00:00:00Z",
        "+024-05-01T10:30:00Z",
        "2024-05-01T10:30:00.é",
        "２０２４-05-01T10:30:00Z",
    ] {
        assert_eq!(Timestamp::parse(bad), None, "{bad}");
    }
    assert!(Timestamp::parse("2000-02-29T00:00:00Z").is_some());
}

#[test]
fn timestamp_conversions() {
    let t = Timestamp::parse("2024-05-01T10:30:00.25Z").unwrap();
    let system = t.to_system_time().unwrap();
    assert_eq!(Timestamp::from(system), t);
    let before = Timestamp::from_unix(-10, 250_000_000).unwrap();
    assert_eq!(Timestamp::from(before.to_system_time().unwrap()), before);
    assert!(t > before);

    let json = serde_json::to_string(&t).unwrap();
    assert_eq!(json, "\"2024-05-01T10:30:00.250Z\"");
    assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
    assert!(serde_json::from_str::<Timestamp>("\"2024-05-01\"").is_err());
}

proptest! {
    #[test]
    fn timestamp_display_round_trips(
        secs in -62_135_596_800i64..253_402_300_800,
        nanos in 0u32..1_000_000_000,
    ) {
        let t = Timestamp::from_unix(secs, nanos).unwrap();
        let text = t.to_string();
        prop_assert_eq!(Timestamp::parse(&text), Some(t), "{}", text);
        if let Some(system) = t.to_system_time() {
            prop_assert_eq!(Timestamp::from(system), t);
        }
    }

    #[test]
    fn never_panics_on_arbitrary_bytes(line in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = Resource::from_line(&line);
        let _ = probe_resource_type(&line);
        let _ = parse_line::<Value>(&line, Some("Patient"));
        let _ = deleted_resources(&line);
        let _ = block_header_reference(&line);
        if let Ok(text) = std::str::from_utf8(&line) {
            let _ = Timestamp::parse(text);
        }
    }

    #[test]
    fn never_panics_on_json_like_text(
        line in r#"[{}\[\]",:a-zA-Z0-9 \\é]{0,64}"#,
        key in prop::sample::select(&["resourceType", "id", "meta", "lastUpdated", "entry", "request"][..]),
    ) {
        let line = format!("{{\"{key}\":{line}");
        let _ = Resource::from_line(line.as_bytes());
        let _ = probe_resource_type(line.as_bytes());
        let _ = deleted_resources(line.as_bytes());
        let _ = block_header_reference(line.as_bytes());
        let _ = Timestamp::parse(&line);
    }

    /// The envelope agrees with a full parse into `serde_json::Value`,
    /// whatever the order of the keys.
    #[test]
    fn envelope_agrees_with_full_parse(
        resource_type in "[A-Z][a-zA-Z]{0,12}",
        id in proptest::option::of("[A-Za-z0-9.\\-é\"\\\\]{1,16}"),
        last_updated in proptest::option::of(-62_135_596_800i64..253_402_300_800),
        extra in prop::collection::vec(("[a-z]{1,8}", any::<i32>()), 0..5),
        order in any::<prop::sample::Index>(),
    ) {
        let mut fields: Vec<(String, Value)> = vec![("resourceType".into(), json!(resource_type))];
        if let Some(id) = &id {
            fields.push(("id".into(), json!(id)));
        }
        if let Some(secs) = last_updated {
            let instant = Timestamp::from_unix(secs, 0).unwrap().to_string();
            fields.push(("meta".into(), json!({"versionId": "1", "lastUpdated": instant, "tag": [{"code": "x"}]})));
        }
        for (key, value) in extra {
            if !matches!(key.as_str(), "id" | "meta") {
                fields.push((key, json!({"meta": {"lastUpdated": "2000-01-01T00:00:00Z"}, "id": value})));
            }
        }
        let rotation = order.index(fields.len());
        fields.rotate_left(rotation);
        let mut line = String::from("{");
        for (i, (key, value)) in fields.iter().enumerate() {
            if i > 0 {
                line.push(',');
            }
            line.push_str(&serde_json::to_string(key).unwrap());
            line.push(':');
            line.push_str(&value.to_string());
        }
        line.push('}');

        let r = Resource::from_line(line.as_bytes()).unwrap();
        prop_assert_eq!(r.raw(), line.as_str());
        prop_assert_eq!(r.resource_type(), resource_type.as_str());
        prop_assert_eq!(r.id(), id.as_deref());
        prop_assert_eq!(r.last_updated().map(|t| t.unix_seconds()), last_updated);
        let probed = probe_resource_type(line.as_bytes()).unwrap();
        prop_assert_eq!(probed.as_deref(), Some(resource_type.as_str()));
    }
}

#[test]
fn common_layout_scan_agrees_with_the_serde_scan() {
    let cases = [
        r#"{"resourceType":"Observation","id":"o-1","meta":{"lastUpdated":"2024-01-09T06:58:38.874Z"},"status":"final"}"#,
        r#"{ "resourceType" : "Patient" , "id" : "p" , "meta" : { "versionId" : "3" , "lastUpdated" : "2024-01-01T00:00:00Z" } , "x" : 1 }"#,
        r#"{"id":"p","meta":{},"resourceType":"Patient","active":true}"#,
        r#"{"meta":{"lastUpdated":"2024-01-01T00:00:00Z"},"resourceType":"Patient","id":"a","b":[1]}"#,
        // Layouts the common scan declines; the serde scan reads them.
        r#"{"resourceType":"Patient","id":"p\u0041","meta":{"lastUpdated":"2024-01-01T00:00:00Z"},"x":1}"#,
        r#"{"resourceType":"Patient","meta":{"tag":[{"code":"x"}],"lastUpdated":"2024-01-01T00:00:00Z"},"id":"p","x":1}"#,
        r#"{"text":{"div":"x"},"resourceType":"Patient","id":"p","meta":{"lastUpdated":"2024-01-01T00:00:00Z"}}"#,
        r#"{"resourceType":"Patient","id":null,"meta":{"lastUpdated":"2024-01-01T00:00:00Z"},"x":1}"#,
        r#"{"resourceType":"Patient","id":"p"}"#,
        r#"{"resourceType":"Patient","id":"p","meta":{"lastUpdated":"2024-01-01T00:00:00Z"}}"#,
        r#"{"resourceType":"Patient","resourceType":"Group","id":"p","meta":{},"x":1}"#,
    ];
    for json in cases {
        let serde = Envelope::scan_serde(json).unwrap();
        let either = Envelope::scan(json).unwrap();
        let fields = |e: &Envelope<'_>| {
            (
                e.resource_type.as_deref().map(str::to_owned),
                e.id.clone().map(|i| i.map(|s| s.into_owned())),
                e.last_updated.as_deref().map(str::to_owned),
            )
        };
        assert_eq!(fields(&either), fields(&serde), "{json}");
        if let Some(common) = Envelope::scan_common(json) {
            assert_eq!(fields(&common), fields(&serde), "{json}");
        }
    }
    // The common layout is taken by the fast path.
    assert!(Envelope::scan_common(cases[0]).is_some());
    assert!(Envelope::scan_common(cases[1]).is_some());
    assert!(
        Envelope::scan_common(cases[4]).is_none(),
        "escapes go to serde"
    );
    assert!(
        Envelope::scan_common(cases[5]).is_none(),
        "non-string meta values go to serde"
    );
}

#[test]
fn check_line_reads_the_whole_line() {
    let ok = br#" {"a":[1,{"b":"c\u00e9"}],"resourceType":"Observation"} "#;
    assert_eq!(check_line(ok).unwrap().as_deref(), Some("Observation"));
    assert_eq!(check_line(br#"{"id":"x"}"#).unwrap(), None);
    // Escaped resourceType is decoded.
    assert_eq!(
        check_line(br#"{"resourceType":"Pati\u0065nt"}"#)
            .unwrap()
            .as_deref(),
        Some("Patient")
    );
    for bad in [
        &br#"{"resourceType":"Patient","id":"#[..],
        br#"{"a":1}{"b":2}"#,
        br#"{"a":1},"#,
        br#"{"a":"tab	inside"}"#,
        b"{\"a\":\"\x00\"}",
        br#"{"a":1,}"#,
        b"",
    ] {
        assert!(
            matches!(check_line(bad), Err(ParseError::Json(_))),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    assert!(matches!(check_line(b"[1,2]"), Err(ParseError::NotAnObject)));
    assert!(matches!(
        check_line(b"\"text\""),
        Err(ParseError::NotAnObject)
    ));
    // Invalid UTF-8 inside a string serde_json would skip unchecked.
    assert!(matches!(
        check_line(b"{\"resourceType\":\"Patient\",\"x\":\"\xc3\x28\"}"),
        Err(ParseError::InvalidUtf8(_))
    ));
}

#[test]
fn json_errors_keep_serde_as_their_source() {
    use std::error::Error as _;
    let error = parse_line::<Resource>(br#"{"resourceType":"#, None).unwrap_err();
    let ParseError::Json(json) = &error else {
        panic!("{error:?}");
    };
    assert!(json.is_eof());
    assert!(json.column() > 0);
    assert!(error.source().is_some_and(|s| s.is::<serde_json::Error>()));
    assert!(matches!(
        parse_line::<serde_json::Value>(b"[1]", None),
        Err(ParseError::NotAnObject)
    ));
}
