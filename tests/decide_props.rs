//! Property tests of the pure decision core (`promoter::engine::decide`).

use promoter::config::PropertyNames;
use promoter::engine::decide::decide;
use promoter::engine::model::{
    AppSnapshot, Command, Decision, DecisionConfig, Owner, PlanKind, StreamRef, Trigger,
};
use proptest::prelude::*;
use std::collections::HashSet;

const NAMES: &[&str] = &[
    "PromoteToServer",
    "PromoteToStream",
    "PromotionApproval",
    "PromotionUnpublish",
    "PromotionS3Versioning",
    "PromoteOnReload",
    "Department",
];

fn value_for(name: &'static str) -> BoxedStrategy<String> {
    let pick =
        |v: &'static [&'static str]| proptest::sample::select(v).prop_map(str::to_string).boxed();
    match name {
        "PromoteToServer" => prop_oneof![
            4 => pick(&[
                "test - Overwrite",
                "test - Duplicate",
                "TEST - overwrite",
                "prod-eu - Duplicate",
                "prod-eu-Overwrite",
                "QA Site - Overwrite",
            ]),
            1 => pick(&["staging - Overwrite", "test", "test - Replace", " - Duplicate", "local - Overwrite"]),
            1 => "[a-zA-Z -]{0,12}",
        ]
        .boxed(),
        "PromoteToStream" => prop_oneof![
            3 => pick(&["Sales", "sales", "Finance", "Ops: EU", "Ünïcode 'quoted'/x"]),
            1 => "[a-zA-Z :]{0,10}",
        ]
        .boxed(),
        "PromotionApproval" => prop_oneof![
            3 => pick(&["Approve", "approved", " DENY ", "Denied"]),
            1 => pick(&["approve please", "den", "", "yes"]),
        ]
        .boxed(),
        _ => prop_oneof![
            3 => pick(&["True", "false", "TRUE", "False"]),
            1 => pick(&["yes", "truee", ""]),
        ]
        .boxed(),
    }
}

fn property() -> impl Strategy<Value = (String, String)> {
    proptest::sample::select(NAMES)
        .prop_flat_map(|n| value_for(n).prop_map(move |v| (n.to_string(), v)))
}

fn trigger() -> impl Strategy<Value = Trigger> {
    proptest::sample::select(
        &[
            Trigger::AppUpdated,
            Trigger::AppReloaded,
            Trigger::AppPublished,
            Trigger::Manual,
            Trigger::Sweep,
        ][..],
    )
}

fn config() -> impl Strategy<Value = DecisionConfig> {
    (any::<[bool; 5]>(), 1usize..=3).prop_map(|(b, n)| DecisionConfig {
        approve_values: vec!["Approve".into(), "Approved".into()],
        deny_values: vec!["Deny".into(), "Denied".into()],
        properties: PropertyNames::default(),
        auto_unpublish: b[0],
        promote_on_reload: b[1],
        reload_tag: "PromoteOnReload".into(),
        versioning_enabled: b[2],
        versioning_auto: b[3],
        remote_aliases: ["test", "prod-eu", "QA Site"][..n]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        email_enabled: b[4],
    })
}

fn snapshot(props: Vec<(String, String)>, published: bool, tagged: bool) -> AppSnapshot {
    AppSnapshot {
        id: "app-1".into(),
        name: "Sales".into(),
        description: String::new(),
        owner: Owner {
            id: "u1".into(),
            directory: "CORP".into(),
            user_id: "jdoe".into(),
            name: "Jane".into(),
            email: None,
        },
        stream: published.then(|| StreamRef {
            id: "s1".into(),
            name: "Review".into(),
        }),
        published,
        custom_properties: props,
        tags: if tagged {
            vec!["PromoteOnReload".into()]
        } else {
            vec![]
        },
        modified_date: "2024-05-01T10:00:00.000Z".into(),
        last_reload_time: None,
        modified_by: Some("CORP\\boss".into()),
    }
}

fn input() -> impl Strategy<Value = (Vec<(String, String)>, bool, bool, Trigger, DecisionConfig)> {
    (
        proptest::collection::vec(property(), 0..8),
        prop::bool::weighted(0.9),
        any::<bool>(),
        trigger(),
        config(),
    )
}

/// Applies the plan's writes to the source app, as the executor would.
fn apply_own_writes(app: &mut AppSnapshot, commands: &[Command]) {
    for c in commands {
        match c {
            Command::StripPromotionProperties { properties } => app
                .custom_properties
                .retain(|(n, _)| !properties.iter().any(|p| p.eq_ignore_ascii_case(n))),
            Command::TagForReload { tag } => app.tags.push(tag.clone()),
            Command::UntagForReload { tag } => app.tags.retain(|t| !t.eq_ignore_ascii_case(tag)),
            Command::UnpublishSource => {
                app.published = false;
                app.stream = None;
            }
            _ => {}
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn property_order_never_changes_the_decision(
        (props, published, tagged, trig, cfg) in input(),
        seed in any::<u64>(),
    ) {
        let a = snapshot(props.clone(), published, tagged);
        let mut shuffled = props;
        // A deterministic permutation from the seed (Fisher-Yates with an LCG).
        let mut s = seed;
        for i in (1..shuffled.len()).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (s >> 33) as usize % (i + 1));
        }
        let b = snapshot(shuffled, published, tagged);
        prop_assert_eq!(decide(&a, trig, &cfg), decide(&b, trig, &cfg));
    }

    #[test]
    fn decide_is_deterministic((props, published, tagged, trig, cfg) in input()) {
        let a = snapshot(props, published, tagged);
        prop_assert_eq!(decide(&a, trig, &cfg), decide(&a.clone(), trig, &cfg));
    }

    #[test]
    fn plans_are_well_formed((props, published, tagged, trig, cfg) in input()) {
        let a = snapshot(props, published, tagged);
        let d = decide(&a, trig, &cfg);
        if !published {
            prop_assert!(matches!(d, Decision::Nothing(_)));
        }
        let Decision::Plan(p) = d else { return Ok(()) };
        prop_assert!(!p.commands.is_empty());

        // No promotion to a site that is not configured.
        let mut pairs = HashSet::new();
        for c in &p.commands {
            if let Command::PromoteTo { site, stream_name, .. } = c {
                prop_assert!(cfg.remote_aliases.contains(site), "unconfigured site {}", site);
                // Each (site, stream) at most once (streams compared as QRS does, without case).
                prop_assert!(pairs.insert((site.clone(), stream_name.to_lowercase())));
            }
        }
        prop_assert_eq!(pairs.len(), p.targets.len());

        // Step keys are unique within a plan.
        let keys: HashSet<String> = p.commands.iter().map(Command::step_key).collect();
        prop_assert_eq!(keys.len(), p.commands.len());

        // Promotions only in promote plans, after the one export, before the clean-up.
        let promotes: Vec<usize> = p.commands.iter().enumerate()
            .filter(|(_, c)| matches!(c, Command::PromoteTo { .. }))
            .map(|(i, _)| i)
            .collect();
        if promotes.is_empty() {
            prop_assert!(!matches!(p.kind, PlanKind::Promote | PlanKind::ReloadPromote));
        } else {
            prop_assert!(matches!(p.kind, PlanKind::Promote | PlanKind::ReloadPromote));
            let export = p.commands.iter()
                .position(|c| *c == Command::ExportSource { skip_data: false });
            prop_assert!(export.is_some_and(|e| e < promotes[0]));
            prop_assert_eq!(p.commands.last(), Some(&Command::CleanUp));
        }

        // Mail only when email is on.
        if !cfg.email_enabled {
            let mails = p.commands.iter().any(|c| matches!(c,
                Command::NotifyApproved | Command::NotifyDenied
                | Command::NotifyResult | Command::NotifyPublishReview));
            prop_assert!(!mails);
        }
        // A reload never unpublishes or strips; a publish only notifies.
        if trig == Trigger::AppReloaded {
            let handles_source = p.commands.iter().any(|c| matches!(c,
                Command::UnpublishSource | Command::StripPromotionProperties { .. }
                | Command::NotifyDenied | Command::NotifyApproved));
            prop_assert!(!handles_source);
        }
        if trig == Trigger::AppPublished {
            prop_assert_eq!(&p.commands, &vec![Command::NotifyPublishReview]);
        }
    }

    #[test]
    fn deny_never_promotes((props, published, tagged, trig, cfg) in input()) {
        // Every approval value is a deny value.
        let props: Vec<_> = props.into_iter()
            .map(|(n, v)| if n == "PromotionApproval" { (n, "Deny".to_string()) } else { (n, v) })
            .collect();
        let a = snapshot(props, published, tagged);
        if let Decision::Plan(p) = decide(&a, trig, &cfg) {
            prop_assert!(p.kind != PlanKind::Promote);
            if p.kind == PlanKind::Deny {
                prop_assert!(p.targets.is_empty());
                let transfers = p.commands.iter().any(|c| matches!(c,
                    Command::PromoteTo { .. } | Command::ExportSource { .. }));
                prop_assert!(!transfers);
            }
        }
    }

    #[test]
    fn own_writes_settle((props, published, tagged, trig, cfg) in input()) {
        // The promoter's own writes come back as updates: after at most two rounds they lead
        // to nothing that writes the source again.
        let mut a = snapshot(props, published, tagged);
        let mut d = decide(&a, trig, &cfg);
        for _ in 0..2 {
            let Decision::Plan(p) = &d else { break };
            if !p.commands.iter().any(Command::writes_source) { break }
            apply_own_writes(&mut a, &p.commands);
            d = decide(&a, Trigger::AppUpdated, &cfg);
        }
        if let Decision::Plan(p) = &d {
            prop_assert!(
                !p.commands.iter().any(Command::writes_source),
                "still writing after two rounds: {:?}", p
            );
        }
    }
}

/// Guards against vacuous properties: the generated inputs reach every plan kind and the
/// common reasons.
#[test]
fn generated_inputs_reach_every_branch() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = input();
    let mut seen = HashSet::new();
    for _ in 0..4000 {
        let (props, published, tagged, trig, cfg) = strategy
            .new_tree(&mut runner)
            .expect("a generated input")
            .current();
        let label = match decide(&snapshot(props, published, tagged), trig, &cfg) {
            Decision::Plan(p) => p.kind.as_str().to_string(),
            Decision::Nothing(r) => r.code().to_string(),
        };
        seen.insert(label);
    }
    for want in [
        "promote",
        "reload_promote",
        "deny",
        "tag_for_reload",
        "untag",
        "publish_review",
        "not_published",
        "unrecognised_approval",
        "unknown_site",
        "malformed_server_value",
        "invalid_flag",
    ] {
        assert!(seen.contains(want), "never reached {want}; seen {seen:?}");
    }
}
