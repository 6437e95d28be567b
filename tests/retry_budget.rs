//! The retry budget: Finagle's arithmetic, time-to-live, and no overdraw under races.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use tower_inference::retry::RetryBudget;

const SEC: Duration = Duration::from_secs(1);

fn drain(budget: &RetryBudget) -> usize {
    (0..100_000).take_while(|_| budget.withdraw()).count()
}

#[test]
fn out_of_range_settings_are_clamped() {
    for (ttl, percent, want_ttl, want_percent) in [
        (Duration::from_millis(999), 0.1, SEC, 0.1),
        (Duration::ZERO, 0.1, SEC, 0.1),
        (61 * SEC, 0.1, 60 * SEC, 0.1),
        (Duration::MAX, 0.1, 60 * SEC, 0.1),
        (10 * SEC, -0.1, 10 * SEC, 0.0),
        (10 * SEC, 1000.1, 10 * SEC, 1000.0),
        (10 * SEC, f64::INFINITY, 10 * SEC, 1000.0),
        (10 * SEC, f64::NAN, 10 * SEC, 0.2),
    ] {
        let budget = RetryBudget::new(ttl, 1, percent);
        assert_eq!(budget.ttl(), want_ttl, "ttl {ttl:?}");
        assert_eq!(budget.retry_percent(), want_percent, "percent {percent}");
    }
}

#[tokio::test(start_paused = true)]
async fn the_reserve_is_min_per_sec_times_ttl() {
    let budget = RetryBudget::new(5 * SEC, 2, 0.0);
    for _ in 0..1_000 {
        budget.deposit();
    }
    assert_eq!(budget.balance(), 10);
    assert_eq!(drain(&budget), 10, "deposits earn nothing at 0 %");
}

#[tokio::test(start_paused = true)]
async fn deposits_earn_their_share() {
    let budget = RetryBudget::new(10 * SEC, 0, 0.1);
    for _ in 0..95 {
        budget.deposit();
    }
    assert_eq!(drain(&budget), 9, "10 % of 95, rounded down");
    for _ in 0..5 {
        budget.deposit();
    }
    assert_eq!(drain(&budget), 1);

    let generous = RetryBudget::new(10 * SEC, 0, 2.5);
    for _ in 0..4 {
        generous.deposit();
    }
    assert_eq!(
        drain(&generous),
        10,
        "percentages above 100 % are allowed, as in Finagle"
    );
}

#[tokio::test(start_paused = true)]
async fn deposits_and_withdrawals_expire_after_the_ttl() {
    let budget = RetryBudget::new(10 * SEC, 0, 0.5);
    for _ in 0..20 {
        budget.deposit();
    }
    assert_eq!(drain(&budget), 10);
    tokio::time::advance(5 * SEC).await;
    for _ in 0..20 {
        budget.deposit();
    }
    assert_eq!(
        drain(&budget),
        10,
        "the new deposits, the earlier ones spent"
    );
    tokio::time::advance(5 * SEC).await;
    // The first deposits and withdrawals (at 0 s) left the 10 s window together.
    assert_eq!(budget.balance(), 0);
    tokio::time::advance(5 * SEC).await;
    assert_eq!(budget.balance(), 0, "everything has expired");
    budget.deposit();
    budget.deposit();
    assert_eq!(drain(&budget), 1);
}

#[tokio::test(start_paused = true)]
async fn withdrawals_expire_so_the_reserve_refills() {
    let budget = RetryBudget::new(SEC, 3, 0.0);
    assert_eq!(drain(&budget), 3);
    tokio::time::advance(SEC).await;
    assert_eq!(drain(&budget), 3);
}

#[test]
fn it_is_a_tower_budget() {
    let budget = RetryBudget::new(SEC, 1, 0.0);
    let tower_budget: &dyn tower::retry::budget::Budget = &budget;
    tower_budget.deposit();
    assert!(tower_budget.withdraw());
    assert!(!tower_budget.withdraw());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_withdrawals_never_overdraw() {
    let budget = Arc::new(RetryBudget::new(60 * SEC, 0, 1.0));
    for _ in 0..1_000 {
        budget.deposit();
    }
    let granted = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (budget, granted) = (budget.clone(), granted.clone());
            tokio::spawn(async move {
                for _ in 0..1_000 {
                    if budget.withdraw() {
                        granted.fetch_add(1, SeqCst);
                    }
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(
        granted.load(SeqCst),
        1_000,
        "exactly the balance, not one more"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_deposits_all_count() {
    let budget = Arc::new(RetryBudget::new(60 * SEC, 0, 0.01));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let budget = budget.clone();
            tokio::spawn(async move {
                for _ in 0..10_000 {
                    budget.deposit();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(
        budget.balance(),
        800,
        "1 % of 80 000 deposits from 8 threads"
    );
}
