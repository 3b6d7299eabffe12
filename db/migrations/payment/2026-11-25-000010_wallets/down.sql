DROP TABLE wallet_entries;
DROP TABLE payments;
DROP TABLE wallets;
