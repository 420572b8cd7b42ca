//! Paging of list RPCs as Google's APIs do it: `pageSize` (0 means the default, capped at a
//! maximum) and an opaque `pageToken` taken from the previous page's `nextPageToken`. A token
//! names the last item of the page before, so a list that changes between pages neither
//! repeats nor skips the items that stayed.

use crate::ControlError;

/// Items per page when the request does not say.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// The most items one page holds, whatever the request asks.
pub const MAX_PAGE_SIZE: usize = 1000;

/// A page request: how many items, and after which.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageRequest {
    pub size: Option<usize>,
    pub token: String,
}

impl PageRequest {
    pub fn new(size: Option<usize>, token: impl Into<String>) -> PageRequest {
        PageRequest { size, token: token.into() }
    }

    /// How many items the page holds at most.
    pub fn limit(&self) -> usize {
        self.size.filter(|n| *n > 0).unwrap_or(DEFAULT_PAGE_SIZE).min(MAX_PAGE_SIZE)
    }

    /// The page of `items` (in list order) this request asks for, and the token of the next
    /// page (empty on the last). `key` is an item's name, unique within the list.
    pub fn page<T>(&self, items: Vec<T>, key: impl Fn(&T) -> &str) -> Result<(Vec<T>, String), ControlError> {
        let start = if self.token.is_empty() {
            0
        } else {
            let after = items.iter().position(|item| key(item) == self.token).ok_or_else(|| {
                ControlError::InvalidArgument(format!(
                    "pageToken {:?} does not belong to this list (or the item it continues after was deleted); \
                     list again without pageToken",
                    self.token
                ))
            })?;
            after + 1
        };
        let size = self.limit();
        let more = items.len() > start + size;
        let page: Vec<T> = items.into_iter().skip(start).take(size).collect();
        let next = if more { page.last().map(|item| key(item).to_owned()).unwrap_or_default() } else { String::new() };
        Ok((page, next))
    }
}

/// Refuses a request whose `etag` (when given) is not the resource's current one.
pub fn check_etag(given: &str, current: &str, resource: &str) -> Result<(), ControlError> {
    if given.is_empty() || given == current {
        return Ok(());
    }
    Err(ControlError::Aborted(format!(
        "{resource} was changed since it was read (etag {given} is not the current {current}); read it again and retry"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("item-{i}")).collect()
    }

    #[test]
    fn pages_follow_each_other_to_the_end() {
        let mut seen = Vec::new();
        let mut request = PageRequest::new(Some(3), "");
        loop {
            let (page, next) = request.page(names(8), |s| s.as_str()).unwrap();
            seen.extend(page);
            if next.is_empty() {
                break;
            }
            request.token = next;
        }
        assert_eq!(seen, names(8));
    }

    #[test]
    fn sizes_default_and_cap_and_a_foreign_token_is_refused() {
        let (page, next) = PageRequest::default().page(names(150), |s| s.as_str()).unwrap();
        assert_eq!((page.len(), next.as_str()), (100, "item-99"));
        let (page, _) = PageRequest::new(Some(5000), "").page(names(1500), |s| s.as_str()).unwrap();
        assert_eq!(page.len(), MAX_PAGE_SIZE);
        let (page, next) = PageRequest::new(Some(10), "").page(names(10), |s| s.as_str()).unwrap();
        assert_eq!((page.len(), next.as_str()), (10, ""));
        let err = PageRequest::new(None, "nope").page(names(3), |s| s.as_str()).unwrap_err();
        assert!(matches!(err, ControlError::InvalidArgument(m) if m.contains("pageToken")));
    }

    #[test]
    fn etags_match_or_abort() {
        check_etag("", "\"1\"", "Job 'x'").unwrap();
        check_etag("\"1\"", "\"1\"", "Job 'x'").unwrap();
        assert!(matches!(check_etag("\"0\"", "\"1\"", "Job 'x'"), Err(ControlError::Aborted(_))));
    }
}
