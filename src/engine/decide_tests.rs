//! Table-driven tests of `decide`: one row per row of the reference decision table, plus one per
//! reason and per fixed defect.

use super::*;
use crate::config::PropertyNames;
use crate::engine::model::{Owner, StreamRef};

fn cfg() -> DecisionConfig {
    DecisionConfig {
        approve_values: vec!["Approve".into(), "Approved".into()],
        deny_values: vec!["Deny".into(), "Denied".into()],
        properties: PropertyNames::default(),
        auto_unpublish: true,
        promote_on_reload: true,
        reload_tag: "PromoteOnReload".into(),
        versioning_enabled: false,
        versioning_auto: false,
        remote_aliases: vec!["test".into(), "prod-eu".into(), "QA Site".into()],
        email_enabled: true,
    }
}

fn app(props: &[(&str, &str)]) -> AppSnapshot {
    AppSnapshot {
        id: "a1".into(),
        name: "Sales".into(),
        description: String::new(),
        owner: Owner {
            id: "u1".into(),
            directory: "CORP".into(),
            user_id: "jdoe".into(),
            name: "Jane Doe".into(),
            email: Some("jane@example.com".into()),
        },
        stream: Some(StreamRef {
            id: "s1".into(),
            name: "Review".into(),
        }),
        published: true,
        custom_properties: props
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
        tags: vec![],
        modified_date: "2024-05-01T10:00:00.000Z".into(),
        last_reload_time: None,
        modified_by: Some("CORP\\approver".into()),
    }
}

const S: &str = "PromoteToServer";
const T: &str = "PromoteToStream";
const A: &str = "PromotionApproval";
const U: &str = "PromotionUnpublish";
const V: &str = "PromotionS3Versioning";
const R: &str = "PromoteOnReload";

enum Expect {
    Plan(PlanKind, &'static [&'static str]),
    Nothing(&'static str),
}

struct Case {
    name: &'static str,
    props: &'static [(&'static str, &'static str)],
    trigger: Trigger,
    tagged: bool,
    published: bool,
    cfg: fn(&mut DecisionConfig),
    expect: Expect,
}

fn same(_: &mut DecisionConfig) {}
fn manual_unpublish(c: &mut DecisionConfig) {
    c.auto_unpublish = false;
}
fn no_email(c: &mut DecisionConfig) {
    c.email_enabled = false;
}
fn versioning(c: &mut DecisionConfig) {
    c.versioning_enabled = true;
}
fn versioning_auto(c: &mut DecisionConfig) {
    c.versioning_enabled = true;
    c.versioning_auto = true;
}
fn no_reload(c: &mut DecisionConfig) {
    c.promote_on_reload = false;
}

const APPROVED_ONE: &[(&str, &str)] = &[(S, "test - Overwrite"), (T, "Sales"), (A, "Approve")];

fn case(
    name: &'static str,
    props: &'static [(&'static str, &'static str)],
    expect: Expect,
) -> Case {
    Case {
        name,
        props,
        trigger: Trigger::AppUpdated,
        tagged: false,
        published: true,
        cfg: same,
        expect,
    }
}

fn cases() -> Vec<Case> {
    use Expect::{Nothing, Plan};
    use PlanKind as K;
    vec![
        // Row A, approval on an update.
        case(
            "A: approve, overwrite, auto-unpublish",
            APPROVED_ONE,
            Plan(
                K::Promote,
                &[
                    "notify:approved",
                    "export:data",
                    "promote:test:Sales",
                    "unpublish",
                    "notify:result",
                    "cleanup",
                ],
            ),
        ),
        Case {
            name: "A: approve, duplicate, keep published: strip",
            props: &[(S, "test - Duplicate"), (T, "Sales"), (A, "Approve")],
            cfg: manual_unpublish,
            ..case(
                "",
                &[],
                Plan(
                    K::Promote,
                    &[
                        "notify:approved",
                        "export:data",
                        "promote:test:Sales",
                        "strip",
                        "notify:result",
                        "cleanup",
                    ],
                ),
            )
        },
        Case {
            name: "A: approve, PromotionUnpublish=True unpublishes",
            props: &[
                (S, "test - Duplicate"),
                (T, "Sales"),
                (A, "Approve"),
                (U, "True"),
            ],
            cfg: manual_unpublish,
            ..case(
                "",
                &[],
                Plan(
                    K::Promote,
                    &[
                        "notify:approved",
                        "export:data",
                        "promote:test:Sales",
                        "unpublish",
                        "notify:result",
                        "cleanup",
                    ],
                ),
            )
        },
        Case {
            name: "A: approve, PromotionUnpublish=false strips",
            props: &[
                (S, "test - Duplicate"),
                (T, "Sales"),
                (A, "Approve"),
                (U, "false"),
            ],
            cfg: manual_unpublish,
            ..case(
                "",
                &[],
                Plan(
                    K::Promote,
                    &[
                        "notify:approved",
                        "export:data",
                        "promote:test:Sales",
                        "strip",
                        "notify:result",
                        "cleanup",
                    ],
                ),
            )
        },
        case(
            "A: two sites x two streams, sites in config order, streams sorted",
            &[
                (T, "Sales"),
                (S, "QA Site - Duplicate"),
                (A, "Approved"),
                (T, "Finance"),
                (S, "test - Overwrite"),
            ],
            Plan(
                K::Promote,
                &[
                    "notify:approved",
                    "export:data",
                    "promote:test:Finance",
                    "promote:test:Sales",
                    "promote:QA Site:Finance",
                    "promote:QA Site:Sales",
                    "unpublish",
                    "notify:result",
                    "cleanup",
                ],
            ),
        ),
        case(
            "A: alias with dashes, no spaces around the last dash, any case",
            &[(S, "PROD-EU-overwrite"), (T, "Sales"), (A, "approve")],
            Plan(
                K::Promote,
                &[
                    "notify:approved",
                    "export:data",
                    "promote:prod-eu:Sales",
                    "unpublish",
                    "notify:result",
                    "cleanup",
                ],
            ),
        ),
        case(
            "A: the same site twice is promoted once; streams de-duplicated without case",
            &[
                (S, "test - Overwrite"),
                (S, "Test - overwrite"),
                (T, "Sales"),
                (T, "sales"),
                (A, "Approve"),
            ],
            Plan(
                K::Promote,
                &[
                    "notify:approved",
                    "export:data",
                    "promote:test:Sales",
                    "unpublish",
                    "notify:result",
                    "cleanup",
                ],
            ),
        ),
        Case {
            name: "A: email off: no mail commands",
            cfg: no_email,
            ..case(
                "",
                APPROVED_ONE,
                Plan(
                    K::Promote,
                    &["export:data", "promote:test:Sales", "unpublish", "cleanup"],
                ),
            )
        },
        Case {
            name: "A: versioning by property",
            props: &[
                (S, "test - Overwrite"),
                (T, "Sales"),
                (A, "Approve"),
                (V, "TRUE"),
            ],
            cfg: versioning,
            ..case(
                "",
                &[],
                Plan(
                    K::Promote,
                    &[
                        "notify:approved",
                        "export:data",
                        "export:nodata",
                        "version",
                        "promote:test:Sales",
                        "unpublish",
                        "notify:result",
                        "cleanup",
                    ],
                ),
            )
        },
        Case {
            name: "A: versioning property False, not auto",
            props: &[
                (S, "test - Overwrite"),
                (T, "Sales"),
                (A, "Approve"),
                (V, "False"),
            ],
            cfg: versioning,
            ..case(
                "",
                &[],
                Plan(
                    K::Promote,
                    &[
                        "notify:approved",
                        "export:data",
                        "promote:test:Sales",
                        "unpublish",
                        "notify:result",
                        "cleanup",
                    ],
                ),
            )
        },
        Case {
            name: "A: auto versioning",
            cfg: versioning_auto,
            ..case(
                "",
                APPROVED_ONE,
                Plan(
                    K::Promote,
                    &[
                        "notify:approved",
                        "export:data",
                        "export:nodata",
                        "version",
                        "promote:test:Sales",
                        "unpublish",
                        "notify:result",
                        "cleanup",
                    ],
                ),
            )
        },
        case(
            "A: versioning off ignores the property",
            &[
                (S, "test - Overwrite"),
                (T, "Sales"),
                (A, "Approve"),
                (V, "True"),
            ],
            Plan(
                K::Promote,
                &[
                    "notify:approved",
                    "export:data",
                    "promote:test:Sales",
                    "unpublish",
                    "notify:result",
                    "cleanup",
                ],
            ),
        ),
        Case {
            name: "A: manual trigger takes the approval path",
            trigger: Trigger::Manual,
            ..case(
                "",
                APPROVED_ONE,
                Plan(
                    K::Promote,
                    &[
                        "notify:approved",
                        "export:data",
                        "promote:test:Sales",
                        "unpublish",
                        "notify:result",
                        "cleanup",
                    ],
                ),
            )
        },
        Case {
            name: "A: sweep trigger takes the approval path",
            trigger: Trigger::Sweep,
            ..case(
                "",
                APPROVED_ONE,
                Plan(
                    K::Promote,
                    &[
                        "notify:approved",
                        "export:data",
                        "promote:test:Sales",
                        "unpublish",
                        "notify:result",
                        "cleanup",
                    ],
                ),
            )
        },
        // Row A, reload.
        Case {
            name: "A(reload): tagged app promoted silently",
            props: &[(S, "test - Overwrite"), (T, "Sales"), (R, "True")],
            trigger: Trigger::AppReloaded,
            tagged: true,
            ..case(
                "",
                &[],
                Plan(
                    K::ReloadPromote,
                    &["export:data", "promote:test:Sales", "cleanup"],
                ),
            )
        },
        Case {
            name: "A(reload): untagged app still gets the results mail (tag not required)",
            props: &[(S, "test - Overwrite"), (T, "Sales"), (R, "true")],
            trigger: Trigger::AppReloaded,
            ..case(
                "",
                &[],
                Plan(
                    K::ReloadPromote,
                    &[
                        "export:data",
                        "promote:test:Sales",
                        "notify:result",
                        "cleanup",
                    ],
                ),
            )
        },
        Case {
            name: "A(reload): versioned",
            props: &[(S, "test - Overwrite"), (T, "Sales"), (R, "True")],
            trigger: Trigger::AppReloaded,
            tagged: true,
            cfg: versioning_auto,
            ..case(
                "",
                &[],
                Plan(
                    K::ReloadPromote,
                    &[
                        "export:data",
                        "export:nodata",
                        "version",
                        "promote:test:Sales",
                        "cleanup",
                    ],
                ),
            )
        },
        Case {
            name: "A(reload): manual run of a reload app promotes now and tags it",
            props: &[
                (S, "test - Overwrite"),
                (T, "Sales"),
                (R, "True"),
                (A, "Deny"),
            ],
            trigger: Trigger::Manual,
            ..case(
                "",
                &[],
                Plan(
                    K::ReloadPromote,
                    &[
                        "tag",
                        "export:data",
                        "promote:test:Sales",
                        "notify:result",
                        "cleanup",
                    ],
                ),
            )
        },
        // Row B.
        case(
            "B: deny, auto-unpublish",
            &[(A, "Deny")],
            Plan(K::Deny, &["notify:denied", "unpublish"]),
        ),
        Case {
            name: "B: deny, PromotionUnpublish=True",
            props: &[(A, "denied"), (U, "True"), (S, "test - Overwrite")],
            cfg: manual_unpublish,
            ..case("", &[], Plan(K::Deny, &["notify:denied", "unpublish"]))
        },
        // Row C.
        Case {
            name: "C: deny, keep published: strip",
            props: &[(A, "Deny"), (T, "Sales")],
            cfg: manual_unpublish,
            ..case("", &[], Plan(K::Deny, &["notify:denied", "strip"]))
        },
        Case {
            name: "C: deny with email off",
            props: &[(A, "Deny")],
            cfg: |c| {
                c.auto_unpublish = false;
                c.email_enabled = false;
            },
            ..case("", &[], Plan(K::Deny, &["strip"]))
        },
        // Row D: log only.
        case(
            "D: approved, stream missing",
            &[(S, "test - Overwrite"), (A, "Approve")],
            Nothing("no_target_stream"),
        ),
        case(
            "D: approved, server missing",
            &[(T, "Sales"), (A, "Approve")],
            Nothing("no_target_site"),
        ),
        case(
            "D: approved, both missing",
            &[(A, "Approve")],
            Nothing("no_target_site"),
        ),
        case(
            "D: approval missing",
            &[(S, "test - Overwrite"), (T, "Sales")],
            Nothing("approval_not_set"),
        ),
        Case {
            name: "D: update of a reload app already tagged",
            props: &[(S, "test - Overwrite"), (T, "Sales"), (R, "True")],
            tagged: true,
            ..case("", &[], Nothing("awaiting_reload"))
        },
        // Promote-on-reload tagging (§5.2 step 6).
        case(
            "tag: update of an untagged reload app, approval ignored whatever the order",
            &[
                (A, "Approve"),
                (R, "True"),
                (S, "test - Overwrite"),
                (T, "Sales"),
            ],
            Plan(K::TagForReload, &["tag"]),
        ),
        case(
            "tag: reload app without streams is not tagged",
            &[(R, "True"), (S, "test - Overwrite")],
            Nothing("no_target_stream"),
        ),
        // Untag after the branch.
        Case {
            name: "untag: tagged, PromoteOnReload removed, approved and stripped",
            props: APPROVED_ONE,
            tagged: true,
            cfg: manual_unpublish,
            ..case(
                "",
                &[],
                Plan(
                    K::Promote,
                    &[
                        "notify:approved",
                        "export:data",
                        "promote:test:Sales",
                        "strip",
                        "untag",
                        "notify:result",
                        "cleanup",
                    ],
                ),
            )
        },
        Case {
            name: "untag: not after an unpublish (the app is gone)",
            props: APPROVED_ONE,
            tagged: true,
            ..case(
                "",
                &[],
                Plan(
                    K::Promote,
                    &[
                        "notify:approved",
                        "export:data",
                        "promote:test:Sales",
                        "unpublish",
                        "notify:result",
                        "cleanup",
                    ],
                ),
            )
        },
        Case {
            name: "untag: tagged app with no promotion properties",
            props: &[("Other", "x")],
            tagged: true,
            ..case("", &[], Plan(K::Untag, &["untag"]))
        },
        Case {
            name: "untag: tagged app with PromoteOnReload=False and a bad approval",
            props: &[(R, "False"), (A, "maybe")],
            tagged: true,
            ..case("", &[], Plan(K::Untag, &["untag"]))
        },
        Case {
            name: "untag: not when promote-on-reload is off",
            props: &[("Other", "x")],
            tagged: true,
            cfg: no_reload,
            ..case("", &[], Nothing("no_promotion_properties"))
        },
        // Every other reason.
        Case {
            name: "not published",
            published: false,
            ..case("", APPROVED_ONE, Nothing("not_published"))
        },
        Case {
            name: "not published, reload",
            published: false,
            trigger: Trigger::AppReloaded,
            ..case(
                "",
                &[(S, "test - Overwrite"), (T, "Sales"), (R, "True")],
                Nothing("not_published"),
            )
        },
        case(
            "no promotion properties",
            &[("Department", "Sales")],
            Nothing("no_promotion_properties"),
        ),
        case(
            "no custom properties at all",
            &[],
            Nothing("no_promotion_properties"),
        ),
        case(
            "only modifier properties",
            &[(U, "True"), (V, "True")],
            Nothing("no_promotion_properties"),
        ),
        Case {
            name: "PromoteOnReload alone with promote-on-reload off",
            cfg: no_reload,
            ..case("", &[(R, "True")], Nothing("no_promotion_properties"))
        },
        case(
            "unrecognised approval value (no substring guessing)",
            &[
                (S, "test - Overwrite"),
                (T, "Sales"),
                (A, "approved by Bob"),
            ],
            Nothing("unrecognised_approval"),
        ),
        case(
            "unrecognised approval: 'den' is not a deny value",
            &[(A, "den")],
            Nothing("unrecognised_approval"),
        ),
        case(
            "conflicting approval values",
            &[
                (S, "test - Overwrite"),
                (T, "Sales"),
                (A, "Approve"),
                (A, "Deny"),
            ],
            Nothing("conflicting_approval"),
        ),
        case(
            "malformed server value: no mode",
            &[(S, "test"), (T, "Sales"), (A, "Approve")],
            Nothing("malformed_server_value"),
        ),
        case(
            "malformed server value: unknown mode",
            &[(S, "test - Replace"), (T, "Sales"), (A, "Approve")],
            Nothing("malformed_server_value"),
        ),
        case(
            "malformed server value: empty alias",
            &[(S, " - Overwrite"), (T, "Sales"), (A, "Approve")],
            Nothing("malformed_server_value"),
        ),
        case(
            "unknown site alias",
            &[
                (S, "staging - Overwrite"),
                (S, "test - Overwrite"),
                (T, "Sales"),
                (A, "Approve"),
            ],
            Nothing("unknown_site"),
        ),
        case(
            "conflicting modes for one site",
            &[
                (S, "test - Overwrite"),
                (S, "TEST - Duplicate"),
                (T, "Sales"),
                (A, "Approve"),
            ],
            Nothing("conflicting_modes"),
        ),
        Case {
            name: "invalid unpublish flag",
            props: &[(A, "Deny"), (U, "yes")],
            cfg: manual_unpublish,
            ..case("", &[], Nothing("invalid_flag"))
        },
        case(
            "unpublish flag ignored with auto-unpublish",
            &[(A, "Deny"), (U, "yes")],
            Plan(K::Deny, &["notify:denied", "unpublish"]),
        ),
        Case {
            name: "invalid versioning flag",
            props: &[
                (S, "test - Overwrite"),
                (T, "Sales"),
                (A, "Approve"),
                (V, "maybe"),
            ],
            cfg: versioning,
            ..case("", &[], Nothing("invalid_flag"))
        },
        Case {
            name: "contradicting flag values",
            props: &[(A, "Deny"), (U, "True"), (U, "False")],
            cfg: manual_unpublish,
            ..case("", &[], Nothing("invalid_flag"))
        },
        case(
            "invalid reload flag",
            &[(R, "yes"), (A, "Approve")],
            Nothing("invalid_flag"),
        ),
        Case {
            name: "reload with promote-on-reload off",
            props: &[(S, "test - Overwrite"), (T, "Sales"), (R, "True")],
            trigger: Trigger::AppReloaded,
            cfg: no_reload,
            ..case("", &[], Nothing("reload_promotion_disabled"))
        },
        Case {
            name: "reload of an app not marked for reload (and no denial mail)",
            props: &[(S, "test - Overwrite"), (T, "Sales"), (A, "Deny")],
            trigger: Trigger::AppReloaded,
            ..case("", &[], Nothing("not_marked_for_reload"))
        },
        Case {
            name: "reload: PromoteOnReload=False",
            props: &[(S, "test - Overwrite"), (T, "Sales"), (R, "False")],
            trigger: Trigger::AppReloaded,
            tagged: true,
            ..case("", &[], Nothing("not_marked_for_reload"))
        },
        Case {
            name: "reload: bad server value",
            props: &[(S, "test"), (T, "Sales"), (R, "True")],
            trigger: Trigger::AppReloaded,
            ..case("", &[], Nothing("malformed_server_value"))
        },
        Case {
            name: "publish: review notice",
            trigger: Trigger::AppPublished,
            ..case("", &[], Plan(K::PublishReview, &["notify:publish_review"]))
        },
        Case {
            name: "publish: approval properties are not acted on",
            trigger: Trigger::AppPublished,
            ..case(
                "",
                APPROVED_ONE,
                Plan(K::PublishReview, &["notify:publish_review"]),
            )
        },
        Case {
            name: "publish: email off",
            trigger: Trigger::AppPublished,
            cfg: no_email,
            ..case("", &[], Nothing("email_disabled"))
        },
    ]
}

fn run(c: &Case) -> Decision {
    let mut config = cfg();
    (c.cfg)(&mut config);
    let mut a = app(c.props);
    a.published = c.published;
    if c.tagged {
        a.tags = vec!["promoteonreload".into()];
    }
    decide(&a, c.trigger, &config)
}

#[test]
fn decision_table() {
    let mut failures = Vec::new();
    for c in cases() {
        let got = run(&c);
        let ok = match (&c.expect, &got) {
            (Expect::Plan(kind, keys), Decision::Plan(p)) => {
                let got_keys: Vec<String> = p.commands.iter().map(Command::step_key).collect();
                *kind == p.kind && got_keys == *keys
            }
            (Expect::Nothing(code), Decision::Nothing(r)) => *code == r.code(),
            _ => false,
        };
        if !ok {
            let got = match &got {
                Decision::Plan(p) => format!(
                    "plan {} {:?}",
                    p.kind,
                    p.commands.iter().map(Command::step_key).collect::<Vec<_>>()
                ),
                Decision::Nothing(r) => format!("nothing: {} ({r})", r.code()),
            };
            failures.push(format!("{}: got {got}", c.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_reason_has_a_row() {
    let codes: Vec<&str> = cases()
        .iter()
        .filter_map(|c| match c.expect {
            Expect::Nothing(code) => Some(code),
            Expect::Plan(..) => None,
        })
        .collect();
    for code in [
        "not_published",
        "no_promotion_properties",
        "approval_not_set",
        "unrecognised_approval",
        "conflicting_approval",
        "malformed_server_value",
        "unknown_site",
        "conflicting_modes",
        "no_target_site",
        "no_target_stream",
        "invalid_flag",
        "reload_promotion_disabled",
        "not_marked_for_reload",
        "awaiting_reload",
        "email_disabled",
    ] {
        assert!(codes.contains(&code), "no table row for {code}");
    }
}

fn nothing(props: &[(&str, &str)], c: &DecisionConfig) -> String {
    match decide(&app(props), Trigger::AppUpdated, c) {
        Decision::Nothing(r) => r.to_string(),
        Decision::Plan(p) => panic!("expected nothing, got {p:?}"),
    }
}

#[test]
fn reasons_read_well() {
    let c = cfg();
    assert_eq!(
        nothing(&[(A, "Yes please")], &c),
        "unrecognised approval value \"Yes please\" (accepted: \"Approve\", \"Approved\", \"Deny\", \"Denied\")"
    );
    assert_eq!(
        nothing(&[(S, "staging - Overwrite"), (T, "x"), (A, "Approve")], &c),
        "unknown site alias \"staging\" (configured: \"test\", \"prod-eu\", \"QA Site\")"
    );
    assert_eq!(
        nothing(&[(S, "test:Overwrite"), (T, "x"), (A, "Approve")], &c),
        "malformed PromoteToServer value \"test:Overwrite\" (expected \"<alias> - Overwrite\" or \"<alias> - Duplicate\")"
    );
    assert_eq!(
        nothing(&[(S, "test - Overwrite"), (A, "Approve")], &c),
        "no target stream: PromoteToStream has no value"
    );
    assert_eq!(
        nothing(&[(S, "test - Overwrite"), (T, "x")], &c),
        "approval not set: PromotionApproval has no value"
    );
}

#[test]
fn plan_facts() {
    let mut c = cfg();
    c.auto_unpublish = false;
    c.versioning_enabled = true;
    let a = app(&[
        (S, "test - Overwrite"),
        (S, "QA Site - Duplicate"),
        (T, " Sales "),
        (A, " APPROVED "),
        (V, "True"),
        ("promotetostream", "Finance"),
    ]);
    let Decision::Plan(p) = decide(&a, Trigger::AppUpdated, &c) else {
        panic!("expected a plan");
    };
    assert_eq!(p.kind, PlanKind::Promote);
    assert_eq!(p.app_id, "a1");
    assert_eq!(p.app_name, "Sales");
    assert_eq!(p.modified_date, "2024-05-01T10:00:00.000Z");
    assert_eq!(p.approver.as_deref(), Some("CORP\\approver"));
    assert!(p.versioned);
    assert!(!p.unpublish);
    let t: Vec<(&str, &str, Mode)> = p
        .targets
        .iter()
        .map(|t| (t.site.as_str(), t.stream.as_str(), t.mode))
        .collect();
    assert_eq!(
        t,
        [
            ("test", "Finance", Mode::Overwrite),
            ("test", "Sales", Mode::Overwrite),
            ("QA Site", "Finance", Mode::Duplicate),
            ("QA Site", "Sales", Mode::Duplicate),
        ]
    );
    let strip = p
        .commands
        .iter()
        .find_map(|c| match c {
            Command::StripPromotionProperties { properties } => Some(properties.clone()),
            _ => None,
        })
        .expect("a strip step");
    assert_eq!(
        strip,
        [
            "PromoteToServer",
            "PromoteToStream",
            "PromotionApproval",
            "PromotionS3Versioning",
            "PromotionUnpublish"
        ]
    );
    assert_eq!(
        p.target_description("qlik-dev", Some("v7")),
        "App promoted from node: 'qlik-dev' by: 'CORP\\approver' at: '2024-05-01T10:00:00.000Z' where it was owned by: 'CORP\\jdoe'\n\nVersion ID: v7"
    );
}

#[test]
fn notes_name_ignored_properties() {
    let mut c = cfg();
    c.promote_on_reload = false;
    let a = app(&[
        (S, "test - Overwrite"),
        (T, "Sales"),
        (A, "Approve"),
        (U, "False"),
        (V, "True"),
        (R, "True"),
    ]);
    let Decision::Plan(p) = decide(&a, Trigger::AppUpdated, &c) else {
        panic!("expected a plan");
    };
    let notes = p.notes.join("\n");
    assert!(notes.contains("PromoteOnReload is ignored"), "{notes}");
    assert!(
        notes.contains("PromotionS3Versioning is ignored"),
        "{notes}"
    );
    assert!(notes.contains("PromotionUnpublish is ignored"), "{notes}");
}

#[test]
fn configured_names_and_values_are_used() {
    let mut c = cfg();
    c.properties.approval = "Freigabe".into();
    c.properties.promote_to_server = "Ziel".into();
    c.approve_values = vec!["Ja".into()];
    c.deny_values = vec!["Nein".into()];
    let a = app(&[
        ("ziel", "test - Duplicate"),
        (T, "Sales"),
        ("FREIGABE", "ja"),
    ]);
    let d = decide(&a, Trigger::AppUpdated, &c);
    assert_eq!(d.plan().map(|p| p.kind), Some(PlanKind::Promote));
    // The default names mean nothing now.
    let a = app(APPROVED_ONE);
    assert_eq!(
        decide(&a, Trigger::AppUpdated, &c)
            .reason()
            .map(Reason::code),
        Some("approval_not_set")
    );
    // An empty (disabled) unpublish property name matches nothing.
    c.properties.unpublish = String::new();
    c.auto_unpublish = false;
    let a = app(&[("", "True"), ("FREIGABE", "Nein")]);
    let p = decide(&a, Trigger::AppUpdated, &c);
    assert!(!p.plan().expect("a plan").unpublish);
}

#[test]
fn own_writes_do_not_loop() {
    let mut c = cfg();
    c.auto_unpublish = false;
    // After the strip, the app has no promotion properties.
    let a = app(&[("Department", "Sales")]);
    assert_eq!(
        decide(&a, Trigger::AppUpdated, &c)
            .reason()
            .map(Reason::code),
        Some("no_promotion_properties")
    );
    // After tagging, the update is a no-op.
    let mut a = app(&[(S, "test - Overwrite"), (T, "Sales"), (R, "True")]);
    a.tags = vec!["PromoteOnReload".into()];
    assert_eq!(
        decide(&a, Trigger::AppUpdated, &c)
            .reason()
            .map(Reason::code),
        Some("awaiting_reload")
    );
    // The unpublished copy given back to the owner.
    let mut a = app(APPROVED_ONE);
    a.published = false;
    a.stream = None;
    assert_eq!(
        decide(&a, Trigger::AppUpdated, &c)
            .reason()
            .map(Reason::code),
        Some("not_published")
    );
}

#[test]
fn step_keys_never_collide() {
    let a = Command::PromoteTo {
        site: "a:b".into(),
        stream_name: "c".into(),
        mode: Mode::Overwrite,
    };
    let b = Command::PromoteTo {
        site: "a".into(),
        stream_name: "b:c".into(),
        mode: Mode::Overwrite,
    };
    assert_ne!(a.step_key(), b.step_key());
    assert_eq!(a.step_key(), "promote:a%3Ab:c");
}

#[test]
fn decisions_round_trip_through_json() {
    let mut c = cfg();
    c.versioning_enabled = true;
    for d in [
        decide(
            &app(&[
                (S, "test - Overwrite"),
                (T, "Sales"),
                (A, "Approve"),
                (V, "True"),
            ]),
            Trigger::AppUpdated,
            &c,
        ),
        decide(&app(&[(A, "nope")]), Trigger::Manual, &c),
        decide(&app(&[]), Trigger::AppUpdated, &c),
    ] {
        let json = serde_json::to_string(&d).expect("serialise");
        let back: Decision = serde_json::from_str(&json).expect("deserialise");
        assert_eq!(back, d, "{json}");
    }
}

#[test]
fn parse_server_values() {
    assert_eq!(
        parse_server_value("my-site - Overwrite"),
        Some(("my-site", Mode::Overwrite))
    );
    assert_eq!(
        parse_server_value("QA Site - DUPLICATE"),
        Some(("QA Site", Mode::Duplicate))
    );
    assert_eq!(
        parse_server_value("a - b - duplicate"),
        Some(("a - b", Mode::Duplicate))
    );
    assert_eq!(parse_server_value("test"), None);
    assert_eq!(parse_server_value("test - "), None);
    assert_eq!(parse_server_value("- Overwrite"), None);
    assert_eq!(parse_server_value("test - Overwrite now"), None);
}
