//! `userContext=require`: the refusal of a request message naming another user than the token
//! proved, as the shim asks for it (`Authenticator::refuse_user_context`).

mod common;

use common::*;
use kbase_spark_auth::UserId;

/// alice's verified user number, from a real decision.
fn alice(auth: &Authenticator, token: &str) -> UserId {
    call(auth, token).expect("the owner is allowed").user.expect("a verified user")
}

#[test]
fn refusal_names_the_verified_user_and_says_what_to_set() {
    let t = new_token("own");
    let fake = fake(vec![TokenEntry::new(&t, OWNER)]);
    let auth = authenticator(&fake, &[("spark.kbase.auth.userContext", "require")]);
    let user = alice(&auth, &t);
    let token_length = format!("a user_id of {} characters", t.len());
    for (claimed, said) in [
        ("mallory", "user_id 'mallory'"),
        ("", "an empty user_id"),
        ("Alice", "a user_id of 5 characters"),
        (t.as_str(), token_length.as_str()),
        ("a\nb", "a user_id of 3 characters"),
    ] {
        let d = auth.refuse_user_context(user, claimed);
        assert_eq!((d.code(), d.reason), (Code::PermissionDenied, Reason::UserContextMismatch));
        assert!(d.message.contains(said), "{claimed:?}: {}", d.message);
        for hint in ["'alice'", "spark.kbase.auth.userContext=require", ";user_id=alice;", "SPARK_USER=alice"] {
            assert!(d.message.contains(hint), "{hint}: {}", d.message);
        }
        assert!(!d.message.contains(&t) && !d.log_line().contains(&t), "the claimed text may be a secret");
        assert!(!d.log_lines().concat().contains('\n'), "one line each");
    }
    let m = auth.metrics();
    assert_eq!(m.denied_for(Reason::UserContextMismatch), 5);
    assert_eq!(m.allowed, 1, "the call was admitted; its messages are counted apart");
}

#[test]
fn a_number_never_handed_out_is_an_internal_error() {
    let fake = fake(vec![]);
    let auth = authenticator(&fake, &[]);
    let d = auth.refuse_user_context(UserId(3), "mallory");
    assert_eq!((d.code(), d.reason), (Code::Internal, Reason::Internal));
    assert_eq!(auth.user_name(UserId(3)), None);
}
