//! Accounts, local domains and aliases ([`Directory`]) over PostgreSQL.

use super::mailboxes::{MAILBOX_COLUMNS, drop_mailbox, mailbox_of, take_uidvalidity, uidvalidity};
use super::*;

#[async_trait::async_trait]
impl Directory for PostgresStore {
    async fn create_account(&self, address: &str, password_hash: &str) -> Result<()> {
        let address = normalize_address(address);
        let created = now();
        transaction!(self, |tx| {
            let new = exec(
                tx,
                "INSERT INTO accounts (address, password_hash, created) VALUES ($1, $2, $3) \
                 ON CONFLICT (address) DO NOTHING",
                &[&address, &password_hash, &created],
            )
            .await?;
            if new == 0 {
                return Err(StoreError::Exists(format!("account {address}")).into());
            }
            let first = take_uidvalidity(tx, DEFAULT_MAILBOXES.len() as i64).await?;
            for (i, (name, special)) in DEFAULT_MAILBOXES.iter().enumerate() {
                // Mailboxes a message was filed into before the account existed stay.
                exec(
                    tx,
                    "INSERT INTO mailboxes \
                     (owner, name, uidvalidity, uidnext, highest_modseq, special_use) \
                     VALUES ($1, $2, $3, 1, 1, $4) ON CONFLICT (owner, name) DO NOTHING",
                    &[&address, name, &uidvalidity(first + i as i64), special],
                )
                .await?;
                // A new account's mailboxes are subscribed, so clients that show only
                // subscribed folders show them.
                exec(
                    tx,
                    "INSERT INTO subscriptions (owner, name) VALUES ($1, $2) \
                     ON CONFLICT (owner, name) DO NOTHING",
                    &[&address, name],
                )
                .await?;
            }
            Ok(())
        })
    }

    async fn delete_account(&self, address: &str) -> Result<()> {
        let address = normalize_address(address);
        let (gone, _lock) = locked_transaction!(self, [address.as_str()], |tx| {
            let n = exec(tx, "DELETE FROM accounts WHERE address = $1", &[&address]).await?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("account {address}")).into());
            }
            let boxes = rows(
                tx,
                &format!("SELECT {MAILBOX_COLUMNS} FROM mailboxes WHERE owner = $1 FOR UPDATE"),
                &[&address],
            )
            .await?;
            let mut gone = Vec::with_capacity(boxes.len());
            for r in boxes {
                let mb = mailbox_of(&r);
                drop_mailbox(tx, mb.id).await?;
                gone.push(mb);
            }
            exec(
                tx,
                "DELETE FROM subscriptions WHERE owner = $1",
                &[&address],
            )
            .await?;
            Ok(gone)
        })?;
        for mb in gone {
            self.mailbox_deleted(&address, &mb, Vec::new());
        }
        Ok(())
    }

    async fn account(&self, address: &str) -> Result<Option<Account>> {
        let c = self.client().await?;
        let r = row(
            &c,
            "SELECT address, password_hash, created FROM accounts WHERE address = $1",
            &[&normalize_address(address)],
        )
        .await?;
        Ok(r.map(|r| account_of(&r)))
    }

    async fn account_exists(&self, address: &str) -> Result<bool> {
        let c = self.client().await?;
        Ok(row(
            &c,
            "SELECT 1 FROM accounts WHERE address = $1",
            &[&normalize_address(address)],
        )
        .await?
        .is_some())
    }

    async fn accounts(&self) -> Result<Vec<Account>> {
        let c = self.client().await?;
        let rs = rows(
            &c,
            "SELECT address, password_hash, created FROM accounts ORDER BY address",
            &[],
        )
        .await?;
        Ok(rs.iter().map(account_of).collect())
    }

    async fn set_password(&self, address: &str, password_hash: &str) -> Result<()> {
        let address = normalize_address(address);
        let c = self.client().await?;
        let n = exec(
            &c,
            "UPDATE accounts SET password_hash = $2 WHERE address = $1",
            &[&address, &password_hash],
        )
        .await?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("account {address}")));
        }
        Ok(())
    }

    async fn add_domain(&self, domain: &str) -> Result<()> {
        let d = domain.trim().to_lowercase();
        let c = self.client().await?;
        let n = exec(
            &c,
            "INSERT INTO domains (name) VALUES ($1) ON CONFLICT (name) DO NOTHING",
            &[&d],
        )
        .await?;
        if n == 0 {
            return Err(StoreError::Exists(format!("domain {d}")));
        }
        Ok(())
    }

    async fn delete_domain(&self, domain: &str) -> Result<()> {
        let d = domain.trim().to_lowercase();
        let c = self.client().await?;
        let n = exec(&c, "DELETE FROM domains WHERE name = $1", &[&d]).await?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("domain {d}")));
        }
        Ok(())
    }

    async fn domains(&self) -> Result<Vec<String>> {
        let c = self.client().await?;
        let rs = rows(&c, "SELECT name FROM domains ORDER BY name", &[]).await?;
        Ok(rs.iter().map(|r| r.get(0)).collect())
    }

    async fn set_alias(&self, alias: &str, targets: &[String]) -> Result<()> {
        let targets: Vec<String> = targets.iter().map(|t| normalize_address(t)).collect();
        let c = self.client().await?;
        exec(
            &c,
            "INSERT INTO aliases (alias, targets) VALUES ($1, $2) \
             ON CONFLICT (alias) DO UPDATE SET targets = EXCLUDED.targets",
            &[&normalize_address(alias), &targets],
        )
        .await?;
        Ok(())
    }

    async fn delete_alias(&self, alias: &str) -> Result<()> {
        let a = normalize_address(alias);
        let c = self.client().await?;
        let n = exec(&c, "DELETE FROM aliases WHERE alias = $1", &[&a]).await?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("alias {a}")));
        }
        Ok(())
    }

    async fn alias(&self, alias: &str) -> Result<Option<Vec<String>>> {
        let c = self.client().await?;
        let r = row(
            &c,
            "SELECT targets FROM aliases WHERE alias = $1",
            &[&normalize_address(alias)],
        )
        .await?;
        Ok(r.map(|r| r.get(0)))
    }

    async fn aliases(&self) -> Result<Vec<(String, Vec<String>)>> {
        let c = self.client().await?;
        let rs = rows(&c, "SELECT alias, targets FROM aliases ORDER BY alias", &[]).await?;
        Ok(rs.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

fn account_of(r: &Row) -> Account {
    Account {
        address: r.get(0),
        password_hash: r.get(1),
        created: r.get(2),
    }
}
