//! Accounts, domains and aliases ([`Directory`]) over sled.

use ::sled::Transactional;

use super::blobs::release_blob;
use super::*;

#[async_trait::async_trait]
impl Directory for SledStore {
    async fn create_account(&self, address: &str, password_hash: &str) -> Result<()> {
        let address = normalize_address(address);
        let account = Account {
            address: address.clone(),
            password_hash: password_hash.into(),
            created: now(),
        };
        let mut boxes = Vec::new();
        for (name, special) in DEFAULT_MAILBOXES {
            boxes.push(self.new_mailbox(name, *special)?);
        }
        (&self.accounts, &self.mailboxes)
            .transaction(|(acc, mbx)| {
                if acc.get(address.as_bytes())?.is_some() {
                    return abort(StoreError::Exists(format!("account {address}")));
                }
                acc.insert(
                    address.as_bytes(),
                    serde_json::to_vec(&account).expect("json"),
                )?;
                for b in &boxes {
                    mbx.insert(
                        mbox_key(&address, &b.name),
                        serde_json::to_vec(b).expect("json"),
                    )?;
                }
                Ok(())
            })
            .map_err(tx_err)?;
        // A new account's mailboxes are subscribed, so clients that show only subscribed
        // folders show them (Dovecot's `auto = subscribe`).
        for b in &boxes {
            self.subscriptions
                .insert(mbox_key(&address, &b.name), &[])?;
        }
        Ok(())
    }

    async fn delete_account(&self, address: &str) -> Result<()> {
        let address = normalize_address(address);
        if self.accounts.remove(address.as_bytes())?.is_none() {
            return Err(StoreError::NotFound(format!("account {address}")));
        }
        let mut prefix = address.as_bytes().to_vec();
        prefix.push(0);
        let _uids = self.uid_lock.lock().expect("uid lock");
        for item in self.mailboxes.scan_prefix(&prefix) {
            let (k, v) = item?;
            let mb: Mailbox = serde_json::from_slice(&v)?;
            let cleanup = (|| -> Result<()> {
                for m in self.read_messages(mb.id)? {
                    self.messages.remove(msg_key(mb.id, m.uid))?;
                    release_blob(&self.blobrefs, &self.blobs, m.blob)?;
                }
                self.mailboxes.remove(k)?;
                Ok(())
            })();
            // Announced whatever the cleanup met, so caches drop the mailbox.
            self.watchers.mailbox_deleted(&address, &mb, Vec::new());
            cleanup?;
        }
        for item in self.subscriptions.scan_prefix(&prefix) {
            let (k, _) = item?;
            self.subscriptions.remove(k)?;
        }
        Ok(())
    }

    async fn account(&self, address: &str) -> Result<Option<Account>> {
        match self.accounts.get(normalize_address(address).as_bytes())? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    async fn account_exists(&self, address: &str) -> Result<bool> {
        Ok(self
            .accounts
            .contains_key(normalize_address(address).as_bytes())?)
    }

    async fn accounts(&self) -> Result<Vec<Account>> {
        self.accounts
            .iter()
            .values()
            .map(|v| Ok(serde_json::from_slice(&v?)?))
            .collect()
    }

    async fn set_password(&self, address: &str, password_hash: &str) -> Result<()> {
        let key = normalize_address(address);
        update_json(
            &self.accounts,
            key.as_bytes(),
            || format!("account {key}"),
            |a: &mut Account| a.password_hash = password_hash.into(),
        )
    }

    async fn add_domain(&self, domain: &str) -> Result<()> {
        let d = domain.trim().to_lowercase();
        if self.domains.insert(d.as_bytes(), &[])?.is_some() {
            return Err(StoreError::Exists(format!("domain {d}")));
        }
        Ok(())
    }

    async fn delete_domain(&self, domain: &str) -> Result<()> {
        let d = domain.trim().to_lowercase();
        match self.domains.remove(d.as_bytes())? {
            Some(_) => Ok(()),
            None => Err(StoreError::NotFound(format!("domain {d}"))),
        }
    }

    async fn domains(&self) -> Result<Vec<String>> {
        self.domains
            .iter()
            .keys()
            .map(|k| Ok(String::from_utf8_lossy(&k?).into_owned()))
            .collect()
    }

    async fn set_alias(&self, alias: &str, targets: &[String]) -> Result<()> {
        let targets: Vec<String> = targets.iter().map(|t| normalize_address(t)).collect();
        self.aliases.insert(
            normalize_address(alias).as_bytes(),
            serde_json::to_vec(&targets)?,
        )?;
        Ok(())
    }

    async fn delete_alias(&self, alias: &str) -> Result<()> {
        let a = normalize_address(alias);
        match self.aliases.remove(a.as_bytes())? {
            Some(_) => Ok(()),
            None => Err(StoreError::NotFound(format!("alias {a}"))),
        }
    }

    async fn alias(&self, alias: &str) -> Result<Option<Vec<String>>> {
        match self.aliases.get(normalize_address(alias).as_bytes())? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    async fn aliases(&self) -> Result<Vec<(String, Vec<String>)>> {
        self.aliases
            .iter()
            .map(|r| {
                let (k, v) = r?;
                Ok((
                    String::from_utf8_lossy(&k).into_owned(),
                    serde_json::from_slice(&v)?,
                ))
            })
            .collect()
    }
}
